#%Module1.0
##
## ${module}: a shipenv bundle in ${source}
## Written by `shipenv modulefile` (shipenv ${shipenv_version}); write it again
## rather than edit it. Loading puts the bundle's bin/ first on PATH, and that
## is all: the bundle needs no other variable, and unloading undoes it.
##

proc ModulesHelp { } {
    puts stderr ${help}
}

${whatis}

${conflict}
prepend-path PATH ${bin}
