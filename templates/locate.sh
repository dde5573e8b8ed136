p=$0
while [ -h "$p" ]; do
    t=$(readlink -- "$p")
    case $t in
        /*) p=$t ;;
        *) p=${p%/*}/$t ;;
    esac
done
case $p in */*) d=${p%/*} ;; *) d=. ;; esac
d=$(cd -P -- "$d" && pwd -P) || exit 127
