# shipenv: activate a relocatable bundle in the current csh or tcsh shell.
#
#     source /srv/app/current/bin/activate.csh
#
# Finds the bundle from this file's own location, puts its bin/ first on
# PATH, sets SHIPENV_BUNDLE to its root and prefixes the prompt with
# "(NAME-VERSION) ", the root directory's name (interactive shells only, and
# unless SHIPENV_DISABLE_PROMPT is set). `deactivate` restores PATH, the prompt
# and PYTHONHOME; `deactivate nondestructive` does the same but keeps itself.
# VIRTUAL_ENV is left alone on purpose: a bundle is a release, not a venv, and
# tools that see VIRTUAL_ENV would install packages into it.
#
# csh does not tell a sourced file its name. tcsh's $_ holds the previous
# command line at the top of a sourced file, and only at an interactive prompt;
# BSD csh (Debian's csh) has no $_ at all. Both keep the file open while they
# read it, so it is found among the shell's open files in /proc/$$/fd, which
# the kernel reports as an absolute path with every symlink resolved. Linux
# only, like the bundle. csh has no return: the error paths are else branches.

set _shipenv_file = ""
if (-d /proc/$$/fd) then
    foreach _shipenv_fd (/proc/$$/fd/*)
        set _shipenv_t = "`readlink $_shipenv_fd`"
        if ("$_shipenv_t:t" == "activate.csh") set _shipenv_file = "$_shipenv_t"
    end
endif
set _shipenv_root = "$_shipenv_file:h:h"

if ("$_shipenv_file" == "") then
    sh -c 'printf "%s\n" "$0" >&2' "activate.csh: cannot find its own location: /proc/$$/fd is not readable here; run the bundle's bin/ commands directly"
else if (! -f "$_shipenv_root/.shipenv/manifest.json") then
    sh -c 'printf "%s\n" "$0" >&2' "activate.csh: $_shipenv_file is not inside a shipenv bundle (no .shipenv/manifest.json beside its bin/)"
else
    # Leave whatever is active first: a previous activation of this or another
    # bundle, or a venv (venv's deactivate alias takes the same word).
    if ("`alias deactivate`" != "") then
        deactivate nondestructive
    endif

    # One line, as aliases are; each `test ... &&` expands its variables only
    # when it runs, so unset ones are skipped instead of being errors.
    alias deactivate 'test $?_shipenv_old_path = 1 && setenv PATH "$_shipenv_old_path" && unset _shipenv_old_path; test $?_shipenv_old_pythonhome = 1 && setenv PYTHONHOME "$_shipenv_old_pythonhome" && unset _shipenv_old_pythonhome; test $?_shipenv_old_prompt = 1 && set prompt = $_shipenv_old_prompt:q && unset _shipenv_old_prompt; unsetenv SHIPENV_BUNDLE; rehash; test "\!:*" != nondestructive && unalias deactivate'

    setenv SHIPENV_BUNDLE "$_shipenv_root"
    set _shipenv_old_path = "$PATH"
    setenv PATH "$SHIPENV_BUNDLE/bin:$PATH"

    if ($?PYTHONHOME) then
        set _shipenv_old_pythonhome = "$PYTHONHOME"
        unsetenv PYTHONHOME
    endif

    set _shipenv_t = $?prompt
    if ($?SHIPENV_DISABLE_PROMPT) then
        if ("$SHIPENV_DISABLE_PROMPT" != "") set _shipenv_t = 0
    endif
    if ($_shipenv_t) then
        # :q keeps a prompt with a newline in it as one word.
        set _shipenv_old_prompt = $prompt:q
        # The same name as the other shells show: \ $ ` % ! replaced by _
        # (tcsh expands % in a prompt, both csh expand !). Octal escapes keep
        # csh's own history expansion out of it.
        set _shipenv_t = "`printenv SHIPENV_BUNDLE | tr '\134\044\140\045\041' _____`"
        set prompt = "($_shipenv_t:t) "$prompt:q
    endif

    rehash
endif

unset _shipenv_file _shipenv_fd _shipenv_t _shipenv_root
