/*
 * sbx-init: pid 1 of a local sandbox, and its exec server.
 *
 * Usage (bwrap runs it with --as-pid-1):  sbx-init LISTEN_FD READY_FD SECCOMP_FD
 *        (the launcher, before bwrap):     sbx-init --userns UID GID SYNC_FD GO_FD -- BWRAP ARGS...
 *
 * - Hardens the sandbox before anything else runs in it (harden()): the host-facing parts
 *   of /proc read-only or covered, CAP_SYS_ADMIN (which bwrap leaves it for exactly this)
 *   dropped from every set, the bounding set shrunk, then the seccomp filter loaded from
 *   SECCOMP_FD. Direct mount calls here cost microseconds; the same done by bubblewrap's
 *   options cost about a millisecond per start (each re-reads the mount table).
 * - Reaps every orphan of the sandbox (it is the pid namespace's init).
 * - Writes one newline to READY_FD once it runs inside the finished root, then closes it.
 * - Accepts connections on LISTEN_FD, a unix socket the host bound in a directory only the
 *   host can reach. Each connection asks for one command: the host sends a header
 *   "SBX1" + u32 payload length (little endian) with two file descriptors attached
 *   (the command's stdout and stderr; a third, when sent, is its stdin), then the payload: NUL-separated fields
 *   cwd, argc, argv..., env... . A cwd written "@UID:GID@PATH" runs the command as that user
 *   and group (an image's User; no supplementary groups, no capabilities left), in PATH.
 *   A forked helper runs the command in a new session and
 *   answers "E<wait status>\n" when it ends. A "K" from the host, or the host closing the
 *   connection early, kills the command's process group (an exec timeout).
 *   A terminal session is the header "SBXT" with no descriptors, and the fields cwd, cols,
 *   rows, argc, argv..., env... . The helper opens a new pseudo-terminal in the sandbox's
 *   own devpts (/dev/pts, which bwrap mounted as a new instance), starts the command on it
 *   as a session leader with the terminal as its controlling tty, and passes the
 *   terminal's master back over the connection ("T\n" with the descriptor attached); the
 *   host reads, writes and resizes through it. The end is reported and asked for as for
 *   exec, and a "K" (or the host hanging up) kills every process of the terminal's session.
 *
 * The command is forked from inside the sandbox, so it starts in the sandbox's cgroups and
 * namespaces with the sandbox's capabilities; no host process ever enters the sandbox.
 * Kept tiny (no allocation beyond one request, no threads): it costs well under 1 MB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <grp.h>
#include <sched.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define MAX_PAYLOAD (16u << 20)
#define DEVPTS_MAGIC 0x1cd1
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

enum request { EXEC_REQUEST, TERMINAL_REQUEST };

static int read_full(int fd, char *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

static void close_from(int low) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)low, ~0u, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (int fd = low; fd < (max > 0 ? max : 1024); fd++) close(fd);
}

/* Receive the header, and for exec the two descriptors (a terminal request has none). */
static int receive_header(int conn, uint32_t *len, int fds[3], enum request *kind) {
    char header[8];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * 3)];
    } control;
    struct iovec iov = {header, sizeof header};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do {
        n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return -1;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    int is_rights = cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS;
    /* Two descriptors (stdout, stderr; stdin is /dev/null) or three (and stdin: a
     * streamed process, the SSH gateway's commands). */
    int have_fds = 0;
    if (is_rights && cmsg->cmsg_len == CMSG_LEN(sizeof(int) * 2)) {
        memcpy(fds, CMSG_DATA(cmsg), sizeof(int) * 2);
        have_fds = 2;
    } else if (is_rights && cmsg->cmsg_len == CMSG_LEN(sizeof(int) * 3)) {
        memcpy(fds, CMSG_DATA(cmsg), sizeof(int) * 3);
        have_fds = 3;
    }
    if (n < (ssize_t)sizeof header && read_full(conn, header + n, sizeof header - n) < 0)
        return -1;
    if (memcmp(header, "SBX1", 4) == 0 && have_fds)
        *kind = EXEC_REQUEST;
    else if (memcmp(header, "SBXT", 4) == 0 && !cmsg)
        *kind = TERMINAL_REQUEST;
    else
        return -1;
    *len = (uint32_t)(unsigned char)header[4] | (uint32_t)(unsigned char)header[5] << 8 |
           (uint32_t)(unsigned char)header[6] << 16 | (uint32_t)(unsigned char)header[7] << 24;
    return *len <= MAX_PAYLOAD ? 0 : -1;
}

/* Split the payload into NUL-terminated fields: `skip` fields, then argc, argv..., env... */
static char **split_fields(char *payload, uint32_t len, size_t *count) {
    size_t total = 0;
    for (uint32_t i = 0; i < len; i++) total += payload[i] == '\0';
    char **fields = calloc(total + 2, sizeof(char *));
    if (!fields) return NULL;
    size_t n = 0;
    for (char *p = payload; p < payload + len && n < total; p += strlen(p) + 1) fields[n++] = p;
    *count = n;
    return fields;
}

/* In the forked child: become the command. fields[0] is the working directory, fields
 * [skip] argc. Standard descriptors are set up by the caller. */
static void exec_fields(char **fields, size_t n, size_t skip) {
    if (n < skip + 2) _exit(126);
    long argc = strtol(fields[skip], NULL, 10);
    if (argc < 1 || (size_t)argc + skip + 1 > n) _exit(126);
    char **argv = calloc((size_t)argc + 1, sizeof(char *));
    char **envp = calloc(n - skip - 1 - (size_t)argc + 1, sizeof(char *));
    if (!argv || !envp) _exit(126);
    memcpy(argv, &fields[skip + 1], sizeof(char *) * (size_t)argc);
    memcpy(envp, &fields[skip + 1 + argc], sizeof(char *) * (n - skip - 1 - (size_t)argc));
    close_from(3);
    char *cwd = fields[0];
    if (cwd[0] == '@') {
        /* "@UID:GID@PATH": the image's user (see the header); root's rights end here. */
        char *end = NULL;
        unsigned long uid = strtoul(cwd + 1, &end, 10);
        if (!end || *end != ':') _exit(126);
        unsigned long gid = strtoul(end + 1, &end, 10);
        if (!end || *end != '@' || uid > 0xfffffffeUL || gid > 0xfffffffeUL) _exit(126);
        cwd = end + 1;
        gid_t group = (gid_t)gid;
        setgroups(1, &group); /* refused where setgroups is denied (rootless): harmless */
        if (setresgid(group, group, group) != 0 || setresuid(uid, uid, uid) != 0) _exit(126);
    }
    if (chdir(cwd) != 0 && chdir("/") != 0) _exit(126);
    execvpe(argv[0], argv, envp);
    dprintf(2, "%s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

static void reset_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

static void run_command(char *payload, uint32_t len, int in, int out, int err) {
    /* Fields: cwd, argc, argv..., env... (each NUL-terminated). */
    size_t n = 0;
    char **fields = split_fields(payload, len, &n);
    if (!fields) _exit(126);
    reset_signals();
    setsid();
    if (in >= 0) {
        dup2(in, 0);
    } else {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
    }
    dup2(out, 1);
    dup2(err, 2);
    exec_fields(fields, n, 1);
}

/* A new pseudo-terminal of the sandbox: the master from the devpts instance mounted at
 * /dev/pts (checked to be one, since root inside may replace anything else in /dev), the
 * slave opened through the master (no path lookup at all). */
static int open_terminal(int *master, int *slave) {
    *master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW);
    if (*master < 0) return -1;
    struct stat st;
    struct statfs fs;
    if (fstat(*master, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 ||
        minor(st.st_rdev) != 2 || fstatfs(*master, &fs) != 0 || fs.f_type != DEVPTS_MAGIC) {
        errno = ENOTTY;
        return -1;
    }
    int unlock = 0;
    if (ioctl(*master, TIOCSPTLCK, &unlock) != 0) return -1;
    *slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    return *slave < 0 ? -1 : 0;
}

static void run_on_terminal(char **fields, size_t n, int slave) {
    reset_signals();
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) != 0) _exit(126);
    dup2(slave, 0);
    dup2(slave, 1);
    dup2(slave, 2);
    exec_fields(fields, n, 3);
}

/* Kill every process of the terminal's session `sid` (a shell puts each job in a process
 * group of its own, so killing the leader's group is not enough), until none is left
 * alive. Zombies are the init's to reap. Bounded: a session forking faster than it is
 * killed is stopped by pids.max, and whatever is left after that many rounds is left. */
static void kill_session(pid_t sid) {
    kill(-sid, SIGKILL);
    for (int round = 0; round < 1000; round++) {
        int alive = 0;
        DIR *proc = opendir("/proc");
        if (!proc) return;
        struct dirent *entry;
        while ((entry = readdir(proc))) {
            char *end;
            long pid = strtol(entry->d_name, &end, 10);
            if (*end || pid <= 1) continue;
            char path[64], line[512];
            snprintf(path, sizeof path, "/proc/%ld/stat", pid);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t got = read(fd, line, sizeof line - 1);
            close(fd);
            if (got <= 0) continue;
            line[got] = '\0';
            char *after = strrchr(line, ')'); /* the name may hold anything, even ")" */
            char state;
            long ppid, pgrp, session;
            if (!after || sscanf(after + 1, " %c %ld %ld %ld", &state, &ppid, &pgrp, &session) != 4)
                continue;
            if (session != sid || state == 'Z' || state == 'X') continue;
            kill((pid_t)pid, SIGKILL);
            alive = 1;
        }
        closedir(proc);
        if (!alive) return;
        usleep(1000);
    }
}

/* Hand the terminal's master to the host: "T\n" with the descriptor attached. */
static int send_master(int conn, int master) {
    char ok[2] = {'T', '\n'};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {ok, sizeof ok};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &master, sizeof(int));
    ssize_t sent;
    do {
        sent = sendmsg(conn, &msg, MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent == (ssize_t)sizeof ok ? 0 : -1;
}

/* One connection: read the request, run the command, report its end. */
static void serve(int conn) {
    uint32_t len = 0;
    int fds[3] = {-1, -1, -1};
    enum request kind;
    if (receive_header(conn, &len, fds, &kind) < 0) {
        dprintf(conn, "Xbad request\n");
        _exit(1);
    }
    char *payload = malloc(len + 1);
    if (!payload || read_full(conn, payload, len) < 0) {
        dprintf(conn, "Xshort request\n");
        _exit(1);
    }
    payload[len] = '\0';

    char **fields = NULL;
    size_t count = 0;
    int master = -1, slave = -1;
    if (kind == TERMINAL_REQUEST) {
        fields = split_fields(payload, len, &count);
        if (!fields || count < 5) {
            dprintf(conn, "Xbad request\n");
            _exit(1);
        }
        struct winsize size = {0};
        size.ws_col = (unsigned short)strtoul(fields[1], NULL, 10);
        size.ws_row = (unsigned short)strtoul(fields[2], NULL, 10);
        if (open_terminal(&master, &slave) != 0 || ioctl(master, TIOCSWINSZ, &size) != 0) {
            dprintf(conn, "Xterminal: %s\n", strerror(errno));
            _exit(1);
        }
    }

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    pid_t pid = fork();
    if (pid < 0) {
        dprintf(conn, "Xfork: %s\n", strerror(errno));
        _exit(1);
    }
    if (pid == 0) {
        if (kind == TERMINAL_REQUEST) run_on_terminal(fields, count, slave);
        run_command(payload, len, fds[2], fds[0], fds[1]);
    }
    if (kind == TERMINAL_REQUEST) {
        /* Only the host keeps the master: when it lets go, the terminal hangs up. */
        close(slave);
        if (send_master(conn, master) != 0) kill_session(pid);
        close(master);
    } else {
        close(fds[0]);
        close(fds[1]);
        if (fds[2] >= 0) close(fds[2]);
    }
    free(payload);

    struct pollfd watch[2] = {{conn, POLLIN, 0}, {sfd, POLLIN, 0}};
    int killed = 0;
    for (;;) {
        int status;
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            dprintf(conn, "E%d\n", status);
            if (kind == TERMINAL_REQUEST && !killed) {
                /* The leader ended; its jobs may outlive it (the terminal's output goes on
                 * while they hold it) until the host closes the session. */
                watch[1].fd = -1;
                char byte;
                while (poll(watch, 1, -1) < 0 && errno == EINTR) {
                }
                (void)!read(conn, &byte, 1);
                kill_session(pid);
            }
            _exit(0);
        }
        if (poll(watch, 2, -1) < 0 && errno != EINTR) _exit(1);
        if (watch[1].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0) {
            }
        }
        if (!killed && watch[0].revents) {
            char byte;
            ssize_t n = read(conn, &byte, 1);
            if (n <= 0 || byte == 'K') {
                if (kind == TERMINAL_REQUEST) kill_session(pid);
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                killed = 1;
                watch[0].fd = -1; /* poll ignores it now: no spinning on the hang-up */
            }
        }
    }
}

/* Shrink the bounding set to the capabilities we were given. bwrap --as-pid-1 leaves it
 * full; with CAP_SETFCAP a sandbox could then grant a file any capability it names. */
static int bound_capabilities(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1) continue;
        if (data[cap / 32].permitted & (1u << (cap % 32))) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return -1;
    }
    return 0;
}

/* sbx-init --userns UID GID SYNC_FD GO_FD -- PROGRAM ARGS...
 *
 * Become host UID and GID (the sandbox's root outside), make a new user namespace, say
 * so on SYNC_FD, and wait for a "g" on GO_FD: meanwhile the host writes the namespace's id
 * maps (root inside = UID and GID) and uses the namespace for idmapped mounts of the sandbox's
 * layers. Then exec PROGRAM (bubblewrap) as the namespace's root, so every namespace it
 * makes is owned by this one. The namespace is made by UID, not by host root, on purpose:
 * the kernel charges a namespace's per-user counts (inotify instances, processes, keys)
 * to its owner too, and they must never add up to host root's. */
static int enter_userns(int argc, char **argv) {
    if (argc < 8 || strcmp(argv[6], "--") != 0) {
        fprintf(stderr, "usage: sbx-init --userns UID GID SYNC_FD GO_FD -- PROGRAM ARGS...\n");
        return 2;
    }
    char *uid_end = NULL, *gid_end = NULL;
    unsigned long uid = strtoul(argv[2], &uid_end, 10);
    unsigned long gid = strtoul(argv[3], &gid_end, 10);
    int sync_fd = atoi(argv[4]);
    int go_fd = atoi(argv[5]);
    if (*uid_end || *gid_end || uid == 0 || gid == 0 || uid > 0xfffffffeUL || gid > 0xfffffffeUL)
        return 2;
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
        fprintf(stderr, "sbx-init: cannot become the sandbox's host id: %s\n", strerror(errno));
        return 1;
    }
    if (unshare(CLONE_NEWUSER) != 0) {
        fprintf(stderr, "sbx-init: cannot make a user namespace: %s\n", strerror(errno));
        return 1;
    }
    if (write(sync_fd, "\n", 1) != 1) return 1;
    close(sync_fd);
    char go = 0;
    ssize_t n;
    do {
        n = read(go_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'g') return 1; /* the launcher gave up */
    close(go_fd);
    execv(argv[7], &argv[7]);
    fprintf(stderr, "sbx-init: %s: %s\n", argv[7], strerror(errno));
    return 127;
}

/* /proc entries that change the host or tell about it: read-only, or covered, as OCI
 * runtimes do by default (Docker's lists). Entries this kernel lacks are skipped. Files
 * only host root may read (kallsyms, kmsg, kpage*, slabinfo...) need no cover: root
 * inside is not host root. */
static const char *const proc_read_only[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                             "/proc/sysrq-trigger"};
static const char *const proc_masked_files[] = {"/proc/kcore",       "/proc/keys",
                                                "/proc/latency_stats", "/proc/timer_list",
                                                "/proc/timer_stats", "/proc/sched_debug"};
static const char *const proc_masked_dirs[] = {"/proc/acpi", "/proc/asound", "/proc/scsi"};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define PROC_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

static int fail(const char *what, const char *path) {
    fprintf(stderr, "sbx-init: %s %s: %s\n", what, path, strerror(errno));
    return -1;
}

static int protect_proc(void) {
    for (size_t i = 0; i < COUNT(proc_read_only); i++) {
        const char *path = proc_read_only[i];
        if (access(path, F_OK) != 0) continue;
        if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) != 0) return fail("bind", path);
        if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | PROC_FLAGS, NULL) != 0)
            return fail("read-only", path);
    }
    for (size_t i = 0; i < COUNT(proc_masked_files); i++) {
        const char *path = proc_masked_files[i];
        if (access(path, F_OK) != 0) continue;
        if (mount("/dev/null", path, NULL, MS_BIND, NULL) != 0) return fail("cover", path);
    }
    for (size_t i = 0; i < COUNT(proc_masked_dirs); i++) {
        const char *path = proc_masked_dirs[i];
        if (access(path, F_OK) != 0) continue;
        if (mount("none", path, "tmpfs", MS_RDONLY | PROC_FLAGS, "size=0") != 0)
            return fail("cover", path);
    }
    return 0;
}

/* Drop CAP_SYS_ADMIN from the effective, permitted and inheritable sets (the ambient set
 * follows); bound_capabilities() then takes it out of the bounding set too. */
static int drop_admin(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    unsigned int bit = 1u << (CAP_SYS_ADMIN % 32);
    data[CAP_SYS_ADMIN / 32].effective &= ~bit;
    data[CAP_SYS_ADMIN / 32].permitted &= ~bit;
    data[CAP_SYS_ADMIN / 32].inheritable &= ~bit;
    return (int)syscall(SYS_capset, &header, data);
}

/* The filter bubblewrap would load with --seccomp: a classic BPF program read from fd. */
static int load_seccomp(int fd) {
    static struct sock_filter program[4096];
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)program + got, sizeof program - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail("read", "the seccomp filter");
        if (n == 0) break;
        got += (size_t)n;
        if (got == sizeof program) {
            errno = EFBIG;
            return fail("read", "the seccomp filter");
        }
    }
    close(fd);
    if (got == 0 || got % sizeof(struct sock_filter) != 0) {
        errno = EINVAL;
        return fail("load", "the seccomp filter");
    }
    struct sock_fprog prog = {(unsigned short)(got / sizeof(struct sock_filter)), program};
    /* bubblewrap set no_new_privs, which a filter without CAP_SYS_ADMIN requires. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("set", "no_new_privs");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return fail("load", "the seccomp filter");
    return 0;
}

static int harden(int seccomp_fd) {
    if (protect_proc() != 0) return -1;
    if (drop_admin() != 0) return fail("drop", "CAP_SYS_ADMIN");
    if (bound_capabilities() != 0) return fail("limit", "the capability bounding set");
    return load_seccomp(seccomp_fd);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--userns") == 0) return enter_userns(argc, argv);
    if (argc != 4) {
        fprintf(stderr, "usage: sbx-init LISTEN_FD READY_FD SECCOMP_FD\n");
        return 2;
    }
    int listen_fd = atoi(argv[1]);
    int ready_fd = atoi(argv[2]);
    if (harden(atoi(argv[3])) != 0) return 1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    fcntl(listen_fd, F_SETFD, FD_CLOEXEC);
    /* Not dumpable: processes of the sandbox cannot ptrace us or open our descriptors
     * through /proc/1/fd (the exec socket; the host log file bwrap gave us as stdout). */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    if (write(ready_fd, "\n", 1) != 1) return 1;
    close(ready_fd);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
    }

    struct pollfd watch[2] = {{listen_fd, POLLIN, 0}, {sfd, POLLIN, 0}};
    for (;;) {
        if (poll(watch, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (watch[1].revents) {
            struct signalfd_siginfo info;
            while (read(sfd, &info, sizeof info) > 0) {
            }
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
        }
        if (watch[0].revents & POLLIN) {
            int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (conn < 0) continue;
            pid_t pid = fork();
            if (pid == 0) {
                close(listen_fd);
                close(sfd);
                serve(conn);
                _exit(0);
            }
            close(conn);
        }
    }
}
