/*
 * shipenv's native launcher: bin/python, bin/python3 and every command of a
 * bundle, where there is no /bin/sh to run the sh launchers (distroless,
 * FROM scratch).  One static binary (musl linked in, no dynamic loader),
 * copied to every name; it does what templates/python.sh and
 * templates/script.py do:
 *
 *   1. Find itself: /proc/self/exe (symlinks on PATH resolved by the kernel),
 *      else argv[0] as a path or looked up on PATH.  Its directory is the
 *      bundle's bin/, the directory above is the bundle.
 *   2. Read BUNDLE/.shipenv/launcher (written at build time, in RECORD):
 *        interpreter=bin/python3.12     what to exec, relative to the bundle
 *        executable=bin/python          sys.executable: the loader's --argv0,
 *        pyvenv-launcher=yes            and __PYVENV_LAUNCHER__ (CPython 3.11+)
 *        loader=lib/ld-linux-x86-64.so.2   --libc bundled: exec through it,
 *        library-path=lib                  with --inhibit-cache --library-path
 *   3. A launcher with a zip appended (console scripts, --entry commands) is
 *      a script: its zip holds __main__.py, and the interpreter runs the
 *      launcher file itself, as Python runs any zip with data before it.  So
 *      sys.argv[0] is bin/NAME and `bin/python3.X bin/NAME` works too.
 *   4. execve INTERPRETER -E -s [SELF] ARGS...: no child process (signals and
 *      exit status are the interpreter's), argv byte for byte, and the
 *      environment the caller gave plus __PYVENV_LAUNCHER__ alone, which
 *      CPython 3.11+ reads and removes at start-up.
 *
 * Built by src/launcher/build.py (zig cc, musl, static, reproducible).
 * Errors: one line on stderr, exit status 127 (as a shell's "cannot run").
 */
#define _GNU_SOURCE /* strchrnul, stpcpy */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define CONFIG ".shipenv/launcher"
#define LAUNCHER_VAR "__PYVENV_LAUNCHER__="

static const char *self_name = "shipenv launcher";

static _Noreturn void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", self_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(127);
}

static void *need(void *p) {
    if (!p) die("out of memory");
    return p;
}

static char *join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = need(malloc(la + lb + 2));
    memcpy(s, a, la);
    s[la] = '/';
    memcpy(s + la + 1, b, lb + 1);
    return s;
}

/* argv[0] when /proc is not mounted: a path, or a name looked up on PATH. */
static char *from_argv0(const char *argv0, char *found) {
    if (strchr(argv0, '/')) return realpath(argv0, found);
    const char *path = getenv("PATH");
    while (path && *argv0) {
        const char *end = strchrnul(path, ':');
        /* an empty entry is the working directory */
        char *dir = end == path ? need(strdup(".")) : need(strndup(path, (size_t)(end - path)));
        char *candidate = join(dir, argv0);
        char *hit = access(candidate, X_OK) == 0 ? realpath(candidate, found) : NULL;
        free(dir);
        free(candidate);
        if (hit) return hit;
        if (!*end) break;
        path = end + 1;
    }
    return NULL;
}

/* ROOT/value of the line "key=value" in the config text, or NULL without one. */
static char *setting(const char *root, const char *text, const char *key) {
    size_t lk = strlen(key);
    for (const char *line = text; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
        if (strncmp(line, key, lk) == 0 && line[lk] == '=') {
            char *value = need(strndup(line + lk + 1, strcspn(line + lk + 1, "\n")));
            return root ? join(root, value) : value;
        }
    }
    return NULL;
}

/* Does the file end with a zip's end-of-central-directory record (no comment)? */
static int has_zip(const char *self) {
    unsigned char tail[22];
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    off_t size = lseek(fd, 0, SEEK_END);
    int ok = size > (off_t)sizeof tail && pread(fd, tail, sizeof tail, size - (off_t)sizeof tail) == (ssize_t)sizeof tail &&
             memcmp(tail, "PK\5\6", 4) == 0;
    close(fd);
    return ok;
}

int main(int argc, char **argv) {
    static char self[PATH_MAX], text[4096];
    const char *argv0 = argc > 0 && argv[0] ? argv[0] : "";
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    int no_proc = n < 0;
    if (n >= 0) {
        self[n] = 0;
    } else if (!from_argv0(argv0, self)) {
        die("cannot find the bundle: /proc/self/exe is unreadable and argv[0] '%s' does not lead to this launcher "
            "(mount /proc, as every container runtime does, or run it by its path)", argv0);
    }
    char *slash = strrchr(self, '/');
    if (slash) self_name = slash + 1;

    /* self = ROOT/bin/NAME: cut two components (ROOT is "" for a bundle at /). */
    char *root = need(strdup(self));
    for (int up = 0; up < 2; up++) {
        if (!(slash = strrchr(root, '/'))) die("%s is not in the bin/ directory of a bundle", self);
        *slash = 0;
    }

    char *config = join(root, CONFIG);
    int fd = open(config, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot read %s: %s (this launcher runs from the bin/ directory of a shipenv bundle)", config, strerror(errno));
    ssize_t len = read(fd, text, sizeof text - 1);
    close(fd);
    text[len > 0 ? len : 0] = 0;

    char *interpreter = setting(root, text, "interpreter");
    char *executable = setting(root, text, "executable");
    char *loader = setting(root, text, "loader");
    char *library_path = setting(root, text, "library-path");
    char *pyvenv = setting(NULL, text, "pyvenv-launcher");
    if (!interpreter || !executable || (loader && !library_path))
        die("%s lacks interpreter=, executable= or library-path= (rebuild the bundle)", config);
    /* The interpreter's $ORIGIN needs /proc; the bundled loader does not. */
    if (no_proc && !loader)
        fprintf(stderr, "%s: warning: /proc is not mounted, so the interpreter cannot find the bundle's lib/ (mount /proc)\n",
                self_name);

    /* [LOADER --inhibit-cache --library-path LIB --argv0 EXECUTABLE] INTERPRETER -E -s [SELF] ARGS... */
    char **args = need(malloc(sizeof *args * ((size_t)argc + 11)));
    int i = 0;
    if (loader) {
        args[i++] = loader;
        args[i++] = "--inhibit-cache";
        args[i++] = "--library-path";
        args[i++] = library_path;
        args[i++] = "--argv0";
        args[i++] = executable;
    }
    args[i++] = interpreter;
    args[i++] = "-E";
    args[i++] = "-s";
    if (has_zip(self)) args[i++] = self;
    for (int k = 1; k < argc; k++) args[i++] = argv[k];
    args[i] = NULL;

    /* The caller's environment, plus __PYVENV_LAUNCHER__ for 3.11+ (which removes it at start-up). */
    char **env = environ;
    if (pyvenv && strcmp(pyvenv, "yes") == 0) {
        size_t count = 0, j = 0;
        while (environ[count]) count++;
        env = need(malloc(sizeof *env * (count + 2)));
        for (size_t k = 0; k < count; k++)
            if (strncmp(environ[k], LAUNCHER_VAR, sizeof LAUNCHER_VAR - 1) != 0) env[j++] = environ[k];
        env[j] = need(malloc(sizeof LAUNCHER_VAR + strlen(executable)));
        strcpy(stpcpy(env[j++], LAUNCHER_VAR), executable);
        env[j] = NULL;
    }
    execve(args[0], args, env);
    die("cannot run %s: %s", args[0], strerror(errno));
}
