# shipenv: activate a relocatable bundle in the current fish shell.
#
#     source /srv/app/current/bin/activate.fish
#
# Finds the bundle from this file's own location (symlinks and .. resolved to
# the physical path), puts its bin/ first on PATH, sets SHIPENV_BUNDLE to its
# root and prefixes fish_prompt with "(NAME-VERSION) ", the root directory's
# name (unless SHIPENV_DISABLE_PROMPT is set). `deactivate` restores PATH, the
# prompt and PYTHONHOME; `deactivate nondestructive` does the same but keeps
# itself. VIRTUAL_ENV is left alone on purpose: a bundle is a release, not a
# venv, and tools that see VIRTUAL_ENV would install packages into it.

set -l _shipenv_src (status --current-filename)
set -l _shipenv_root
if test -n "$_shipenv_src"; and test "$_shipenv_src" != -
    set _shipenv_root (builtin realpath -- $_shipenv_src 2>/dev/null | string replace -r '/[^/]*/[^/]*$' '')
end
if test -z "$_shipenv_root"; or not test -f "$_shipenv_root/.shipenv/manifest.json"
    echo "activate.fish: cannot find the shipenv bundle from '$_shipenv_src' (no .shipenv/manifest.json beside its bin/); source this file from the bundle's bin/, or run the bundle's bin/ commands directly" >&2
    # In a sourced file, exit skips the rest of the file, not the shell.
    exit 1
end

# Leave whatever is active first: a previous activation of this or another
# bundle, or a venv (venv's, virtualenv's and uv's deactivate take the same word).
if functions -q deactivate
    deactivate nondestructive
end

function deactivate --description 'Leave the shipenv bundle: restore PATH, the prompt and PYTHONHOME'
    if set -q _shipenv_old_path
        set -gx PATH $_shipenv_old_path
        set -e _shipenv_old_path
    end
    if set -q _shipenv_old_pythonhome
        set -gx PYTHONHOME $_shipenv_old_pythonhome
        set -e _shipenv_old_pythonhome
    end
    if set -q _shipenv_label
        set -e _shipenv_label
        functions -e fish_prompt
        # An autoloaded prompt is loaded again from its file, so that
        # `functions fish_prompt` reads as before; any other is copied back.
        if string match -q '*/functions/fish_prompt.fish' -- "$_shipenv_old_prompt_file"; and test -f "$_shipenv_old_prompt_file"
            source $_shipenv_old_prompt_file
        else if functions -q _shipenv_old_fish_prompt
            functions -c _shipenv_old_fish_prompt fish_prompt
        end
        functions -e _shipenv_old_fish_prompt _shipenv_return
        set -e _shipenv_old_prompt_file
    end
    set -e SHIPENV_BUNDLE
    if test "$argv[1]" != nondestructive
        functions -e deactivate
    end
end

set -gx SHIPENV_BUNDLE $_shipenv_root
set -g _shipenv_old_path $PATH
set -gx PATH $SHIPENV_BUNDLE/bin $PATH

if set -q PYTHONHOME
    set -g _shipenv_old_pythonhome $PYTHONHOME
    set -e PYTHONHOME
end

if test -z "$SHIPENV_DISABLE_PROMPT"
    # The same name as the other shells show: \ $ ` % ! replaced by _.
    set -g _shipenv_label (string replace -r '.*/' '' -- $SHIPENV_BUNDLE | string replace -ra '[\\\\$`%!]' _)

    # `functions -q` autoloads the default prompt, so it can be copied.
    if functions -q fish_prompt
        set -g _shipenv_old_prompt_file (functions --details fish_prompt)
        functions -c fish_prompt _shipenv_old_fish_prompt
    end

    function _shipenv_return --description 'Set $status for the prompt of before'
        return $argv[1]
    end

    function fish_prompt --description 'The shipenv bundle name, then the prompt of before'
        set -l last_status $status
        printf '(%s) ' $_shipenv_label
        if functions -q _shipenv_old_fish_prompt
            _shipenv_return $last_status
            _shipenv_old_fish_prompt
        end
    end
end
