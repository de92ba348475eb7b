/* Small POSIX helpers for _core.pyx, kept in C so that each runs with the GIL released
 * and so that platform differences (inotify on Linux only, F_FULLFSYNC on macOS) stay here. */
#ifndef TQ_OS_H
#define TQ_OS_H

#include <dirent.h>
#include <sqlite3.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <stdint.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#define TQ_HAVE_INOTIFY 1
#define TQ_HAVE_FUTEX 1
#else
#include <stdint.h>
#define TQ_HAVE_INOTIFY 0
#define TQ_HAVE_FUTEX 0
#endif

/* SQLite 3.31+ refuses to open a database through a symlink with it; we check with O_NOFOLLOW too. */
#ifndef SQLITE_OPEN_NOFOLLOW
#define SQLITE_OPEN_NOFOLLOW 0
#endif

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW 0
#endif

/* File names of one folder scan, each malloc'd, sorted on request; with how many names of the scan
 * say a process is busy with a batch: a consumer's (chosen_) and a producer's (loading_). */
typedef struct {
    char **names;
    size_t count;
    size_t cap;
    long holding;
    long loading;
} tq_names;

static void tq_names_free(tq_names *n) {
    size_t i;
    for (i = 0; i < n->count; i++) free(n->names[i]);
    free(n->names);
    n->names = NULL;
    n->count = n->cap = 0;
}

static int tq_cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int tq_has_affixes(const char *name, const char *prefix, size_t plen,
                          const char *suffix, size_t slen) {
    size_t nlen;
    if (strncmp(name, prefix, plen) != 0) return 0;
    if (!slen) return 1;
    nlen = strlen(name);
    return nlen >= plen + slen && memcmp(name + nlen - slen, suffix, slen) == 0;
}

/* Names in `dir` starting with `prefix` and ending with `suffix` (may be "").
 * Returns 0, or -1 with errno set (the list is then empty). */
static int tq_scan(const char *dir, const char *prefix, const char *suffix, int sort,
                   tq_names *out) {
    DIR *d;
    struct dirent *e;
    size_t plen = strlen(prefix), slen = strlen(suffix);
    int saved;
    out->names = NULL;
    out->count = out->cap = 0;
    out->holding = out->loading = 0;
    d = opendir(dir);
    if (!d) return -1;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (!tq_has_affixes(e->d_name, prefix, plen, suffix, slen)) {
            out->holding += strncmp(e->d_name, "chosen_", 7) == 0;
            out->loading += strncmp(e->d_name, "loading_", 8) == 0;
            continue;
        }
        if (out->count == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 64;
            char **grown = (char **)realloc(out->names, cap * sizeof(char *));
            if (!grown) goto fail;
            out->names = grown;
            out->cap = cap;
        }
        out->names[out->count] = strdup(e->d_name);
        if (!out->names[out->count]) goto fail;
        out->count++;
        errno = 0;
    }
    if (errno) goto fail;
    closedir(d);
    if (sort && out->count > 1) qsort(out->names, out->count, sizeof(char *), tq_cmp_names);
    return 0;
fail:
    saved = errno ? errno : ENOMEM;
    closedir(d);
    tq_names_free(out);
    errno = saved;
    return -1;
}

/* How many names in `dir` have the prefix and suffix; -1 with errno on error. */
static long tq_count(const char *dir, const char *prefix, const char *suffix) {
    DIR *d;
    struct dirent *e;
    long n = 0;
    size_t plen = strlen(prefix), slen = strlen(suffix);
    d = opendir(dir);
    if (!d) return -1;
    while ((e = readdir(d)) != NULL) {
        if (tq_has_affixes(e->d_name, prefix, plen, suffix, slen)) n++;
    }
    closedir(d);
    return n;
}

static double tq_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void tq_sleep(double seconds) {
    struct timespec ts;
    if (seconds <= 0) return;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

/* Answers of the opening and locking helpers below, besides a descriptor (>= 0). */
#define TQ_ERROR -1        /* errno says why */
#define TQ_LOCK_HELD -2    /* another open file description holds the flock */
#define TQ_NOT_REGULAR -3  /* not a regular file (FIFO, socket, device, directory); *st says what */

/* Lock an open file with flock(LOCK_EX|LOCK_NB): 0, TQ_LOCK_HELD, or TQ_ERROR with errno.
 * flock locks, unlike fcntl record locks, belong to the open file description: the kernel drops one
 * only when its last descriptor closes or its process dies (even on SIGKILL), and closing a copy
 * inherited by a forked child does not drop the parent's. */
static int tq_flock_nb(int fd) {
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EINTR) continue;
        return errno == EWOULDBLOCK ? TQ_LOCK_HELD : TQ_ERROR;
    }
    return 0;
}

static void tq_funlock(int fd) {
    while (flock(fd, LOCK_UN) != 0 && errno == EINTR) {
    }
}

/* Open a file of the queue folder without following a symlink and without blocking (a FIFO would
 * block an open for reading, and SQLite's after it): the descriptor when it is a regular file,
 * TQ_NOT_REGULAR (closed) when it is not, TQ_ERROR with errno (ELOOP: a symlink; ENXIO: a socket).
 * *st is filled either way when the open succeeded. */
static int tq_open_regular(const char *path, int writable, struct stat *st) {
    int fd, saved;
    do {
        fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return TQ_ERROR;
    if (fstat(fd, st) != 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return TQ_ERROR;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return TQ_NOT_REGULAR;
    }
    return fd;
}

/* Whether `path` still names the file open as `fd` (it was not removed or replaced meanwhile). */
static int tq_same_file(const char *path, int fd) {
    struct stat a, b;
    if (lstat(path, &a) != 0 || fstat(fd, &b) != 0) return 0;
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Create `path` (it must not exist) with permission bits `mode` (exactly, whatever the umask, when
 * `exact`), lock it, and check that the name still refers to it once locked (a recovery pass that
 * took the lock first may have removed it). Returns the locked descriptor; TQ_LOCK_HELD when the
 * new file was taken meanwhile (make another); TQ_ERROR with errno (EEXIST: the name is taken). */
static int tq_create_locked(const char *path, int mode, int exact) {
    int fd, rc, saved;
    do {
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return TQ_ERROR;
    if (exact && fchmod(fd, (mode_t)mode) != 0) {
        saved = errno;
        unlink(path);
        close(fd);
        errno = saved;
        return TQ_ERROR;
    }
    rc = tq_flock_nb(fd);
    if (rc == 0 && tq_same_file(path, fd)) return fd;
    saved = errno;
    close(fd);
    if (rc == TQ_ERROR) {
        errno = saved;
        return TQ_ERROR;
    }
    return TQ_LOCK_HELD;
}

/* Take the lock of an existing file of the folder, for recovery: the locked descriptor,
 * TQ_LOCK_HELD (its holder lives), TQ_NOT_REGULAR, or TQ_ERROR with errno (ENOENT: gone). */
static int tq_lock_existing(const char *path, struct stat *st) {
    int fd = tq_open_regular(path, 0, st), rc, saved;
    if (fd < 0) return fd;
    rc = tq_flock_nb(fd);
    if (rc == 0) return fd;
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int tq_fsync_fd(int fd) {
#ifdef F_FULLFSYNC
    if (fcntl(fd, F_FULLFSYNC) == 0) return 0;
#endif
    return fsync(fd);
}

static int tq_fsync_path(const char *path, int is_dir) {
    int fd, rc, saved;
    fd = open(path, O_RDONLY | O_CLOEXEC | (is_dir ? O_DIRECTORY : 0));
    if (fd < 0) return -1;
    rc = tq_fsync_fd(fd);
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* rename() that refuses to replace an existing target: link() then unlink(), falling back to
 * rename() where the file system has no hard links. Returns 0, or -1 with errno (EEXIST). */
static int tq_rename_noreplace(const char *src, const char *dst) {
    struct stat st;
    if (link(src, dst) == 0) {
        if (unlink(src) != 0 && errno != ENOENT) return -1;
        return 0;
    }
    if (errno == EEXIST || errno == ENOENT) return -1;
    if (lstat(dst, &st) == 0) {
        errno = EEXIST;
        return -1;
    }
    return rename(src, dst);
}

/* The errno behind a failed SQLite write: SQLite's own record if it kept one, else the thread's
 * errno when it is one a failed write(2) leaves (SQLite does not always keep it for writes made
 * while committing). Other values may be stale, so they are not guessed at. */
static int tq_write_errno(int sqlite_errno) {
    int e = errno;
    if (sqlite_errno) return sqlite_errno;
    if (e == ENOSPC || e == EFBIG || e == EIO || e == EROFS
#ifdef EDQUOT
        || e == EDQUOT
#endif
    )
        return e;
    return 0;
}

/* Wakes a waiting consumer as soon as a file is renamed into the folder (inotify), instead of
 * polling; with `departures`, a waiting producer as soon as one is renamed out or deleted.
 * Returns a descriptor, or -1 with errno (ENOSYS where there is no inotify). */
static int tq_watch_open_for(const char *dir, int departures) {
#if TQ_HAVE_INOTIFY
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return -1;
    if (inotify_add_watch(fd, dir, departures ? (IN_MOVED_FROM | IN_DELETE)
                                              : (IN_MOVED_TO | IN_CREATE)) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
#else
    (void)dir;
    (void)departures;
    errno = ENOSYS;
    return -1;
#endif
}

static int tq_watch_open(const char *dir) { return tq_watch_open_for(dir, 0); }

/* Waits up to `timeout` seconds for a file whose name starts with `prefix` to land in the watched
 * folder (renamed or linked in). Other files (loading_, journals, chosen_) are ignored, so that
 * idle consumers are woken once per published batch, not once per file operation.
 * 1 = such a file arrived (or the platform cannot say which), 0 = timed out, -1 = error. */
static int tq_watch_wait(int fd, double timeout, const char *prefix) {
    struct pollfd p;
    char buf[8192] __attribute__((aligned(8)));
    size_t plen = strlen(prefix);
    double deadline = tq_now() + timeout;
    for (;;) {
        double left = deadline - tq_now();
        int rc, ms, found = 0;
        ssize_t got;
        if (left < 0) left = 0;
        ms = (int)(left * 1000.0 + 0.999);
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        rc = poll(&p, 1, ms);
        if (rc < 0 && errno != EINTR) return -1;
        if (rc <= 0) {
            if (tq_now() >= deadline) return 0;
            continue;
        }
        while ((got = read(fd, buf, sizeof buf)) > 0) {
#if TQ_HAVE_INOTIFY
            char *q = buf;
            while (q < buf + got) {
                struct inotify_event *ev = (struct inotify_event *)q;
                if ((ev->mask & IN_Q_OVERFLOW) || (ev->len && strncmp(ev->name, prefix, plen) == 0))
                    found = 1;
                q += sizeof(struct inotify_event) + ev->len;
            }
#else
            found = 1;
#endif
        }
        if (found) return 1;
        if (tq_now() >= deadline) return 0;
    }
}

/* -- The doorbell: wake one waiting consumer, in any process -------------------------------------
 * A small file of the queue folder that every process of the queue maps shared. At offset 0, a
 * 32-bit word: whoever puts a batch in ready_ adds 1 to it and wakes one sleeper, in one syscall
 * (FUTEX_WAKE_OP); a consumer with nothing to claim reads the word before it lists the folder and
 * sleeps (FUTEX_WAIT) only while the word still holds what it read, so a ring that comes between
 * its listing and its sleep is never missed. At offset 8, the watcher's lease: until when (in
 * CLOCK_MONOTONIC nanoseconds, the same clock in every process) the watcher sleeps on the folder
 * and takes what lands there itself; ringing then would only wake a second, colder consumer.
 * The mapping is touched by syscalls only, never by a load or a store: a file truncated under us
 * makes them fail with EFAULT instead of a SIGBUS. */
#define TQ_BELL_SIZE 4096
#define TQ_BELL_LEASE_AT 8

/* The longest lease a watcher takes at a time (it renews them while it sleeps). A lease that says
 * it runs further ahead than this was not written by a watcher of this boot: a doorbell kept on
 * disk across a restart (CLOCK_MONOTONIC began again, so its last lease looks days long), a process
 * in another time namespace, or bytes that were never a lease. It is taken as over, as a stopped
 * watcher's is, or it would keep ringers silent until the old boot's uptime came round again. */
#define TQ_WATCH_LEASE_NS 500000000

/* How a sleep on the word ended: timed out, woken by a ring (or a signal), or not begun because the
 * word had moved since it was read (a ring, or a tally that wakes no one). */
enum { TQ_BELL_TIMED_OUT = 0, TQ_BELL_RUNG = 1, TQ_BELL_MOVED = 2 };

static uint64_t tq_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether a watcher sleeps on the folder under the lease `until_ns` at `now_ns` (see
 * TQ_WATCH_LEASE_NS). */
static int tq_lease_runs(uint64_t until_ns, uint64_t now_ns) {
    return until_ns > now_ns && until_ns - now_ns <= (uint64_t)TQ_WATCH_LEASE_NS;
}

/* The shared mapping of the doorbell file open as `fd` (at least 4 bytes long), or NULL with errno. */
static uint32_t *tq_bell_map(int fd) {
#if TQ_HAVE_FUTEX
    void *p = mmap(NULL, TQ_BELL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : (uint32_t *)p;
#else
    (void)fd;
    errno = ENOSYS;
    return NULL;
#endif
}

static void tq_bell_unmap(uint32_t *word) {
#if TQ_HAVE_FUTEX
    if (word) munmap(word, TQ_BELL_SIZE);
#else
    (void)word;
#endif
}

/* The watcher says it sleeps on the folder until `until_ns` (0: it does not): 0, or -1 with errno. */
static int tq_bell_lease(int fd, uint64_t until_ns) {
    ssize_t put;
    do {
        put = pwrite(fd, &until_ns, sizeof until_ns, TQ_BELL_LEASE_AT);
    } while (put < 0 && errno == EINTR);
    return put == (ssize_t)sizeof until_ns ? 0 : -1;
}

/* Whether the word still holds `seen` and a watcher sleeps on the folder now (its lease is not
 * over), in one read. */
static int tq_bell_quiet(int fd, uint32_t seen) {
    unsigned char page[TQ_BELL_LEASE_AT + 8];
    uint32_t word;
    uint64_t until;
    ssize_t got;
    do {
        got = pread(fd, page, sizeof page, 0);
    } while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof page) return 0;
    memcpy(&word, page, sizeof word);
    memcpy(&until, page + TQ_BELL_LEASE_AT, sizeof until);
    return word == seen && tq_lease_runs(until, tq_now_ns());
}

/* At offset 32, what the consumer that listed the folder last saw (tq_busy): written after a
 * listing that claimed a batch or found none, read by whoever puts a batch in ready_ (to wake
 * another consumer only where a CPU can run it) and by consumers that wake by their timeout (to
 * leave batches to a pool that is moving). */
#define TQ_BELL_BUSY_AT 32

/* Processes of a queue busy with a batch, as one listing of its folder saw them, and when. */
typedef struct {
    uint32_t at_ms;    /* CLOCK_MONOTONIC, milliseconds (it wraps; only differences are used) */
    uint16_t holding;  /* consumers holding a batch (chosen_ names) */
    uint16_t loading;  /* producers filling a batch (loading_ names) */
} tq_busy;

/* The doorbell's words read in one pread: the ring count, the lease, the busy report. */
typedef struct {
    uint32_t word;
    uint64_t lease_until_ns;
    tq_busy busy;
} tq_bell_view;

static int tq_bell_view_read(int fd, tq_bell_view *v) {
    unsigned char page[TQ_BELL_BUSY_AT + sizeof(tq_busy)];
    ssize_t got;
    do {
        got = pread(fd, page, sizeof page, 0);
    } while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof page) {
        if (got >= 0) errno = EFAULT;  /* shorter than the words: truncated */
        return -1;
    }
    memcpy(&v->word, page, sizeof v->word);
    memcpy(&v->lease_until_ns, page + TQ_BELL_LEASE_AT, sizeof v->lease_until_ns);
    memcpy(&v->busy, page + TQ_BELL_BUSY_AT, sizeof v->busy);
    return 0;
}

static uint32_t tq_now_ms(void) {
    return (uint32_t)(tq_now_ns() / 1000000u);
}

/* Say what a listing of the folder saw at `at_ms` (one 8-byte pwrite): 0, or -1 with errno. */
static int tq_bell_report_busy(int fd, uint32_t at_ms, long holding, long loading) {
    tq_busy b;
    ssize_t put;
    b.at_ms = at_ms;
    b.holding = (uint16_t)(holding > 65535 ? 65535 : holding);
    b.loading = (uint16_t)(loading > 65535 ? 65535 : loading);
    do {
        put = pwrite(fd, &b, sizeof b, TQ_BELL_BUSY_AT);
    } while (put < 0 && errno == EINTR);
    return put == (ssize_t)sizeof b ? 0 : -1;
}

/* Processes runnable on the whole machine right now (the fourth field of /proc/loadavg, "R/T"),
 * read through `fd` open on it; -1 where it cannot be read. */
static long tq_running_now(int fd) {
    char buf[128];
    ssize_t got;
    char *p, *end;
    long r;
    int fields = 0;
    if (fd < 0) return -1;
    do {
        got = pread(fd, buf, sizeof buf - 1, 0);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return -1;
    buf[got] = 0;
    for (p = buf; *p && fields < 3; p++)
        if (*p == ' ') fields++;
    if (fields < 3) return -1;
    r = strtol(p, &end, 10);
    return end != p && *end == '/' && r >= 0 ? r : -1;
}

/* Sleepers say which of two tiers they sleep in: consumers that claimed a batch a moment ago (their
 * memory still in the caches) are woken before the others. */
#define TQ_BELL_WARM 1u
#define TQ_BELL_COLD 2u
#define TQ_BELL_IDLE_AT 16  /* a word no one sleeps on: FUTEX_WAKE_OP's first target */

/* A batch came that no one is woken for: add 1 to the word (atomically, in the kernel), waking no
 * one: FUTEX_WAKE_OP's first target has no sleepers, and its second wake is conditioned on the old
 * value being -1 (once in 2^32 adds, when one extra wake is harmless). Consumers that wake by
 * their timeout see that it moved, and look. 0, or -1 with errno (EFAULT: the file was truncated). */
static int tq_bell_tally(uint32_t *word) {
#if TQ_HAVE_FUTEX
    uint32_t *idle = (uint32_t *)((char *)word + TQ_BELL_IDLE_AT);
    return syscall(SYS_futex, idle, FUTEX_WAKE_OP, 1, (void *)(uintptr_t)0, word,
                   FUTEX_OP(FUTEX_OP_ADD, 1, FUTEX_OP_CMP_EQ, -1)) < 0 ? -1 : 0;
#else
    (void)word;
    errno = ENOSYS;
    return -1;
#endif
}

/* Add 1 to the word and wake one sleeper, a warm one if any sleeps: 0, or -1 with errno. */
static int tq_bell_ring(uint32_t *word) {
#if TQ_HAVE_FUTEX
    long rc;
    if (tq_bell_tally(word) != 0) return -1;
    rc = syscall(SYS_futex, word, FUTEX_WAKE_BITSET, 1, NULL, NULL, TQ_BELL_WARM);
    if (rc == 0)
        rc = syscall(SYS_futex, word, FUTEX_WAKE_BITSET, 1, NULL, NULL, TQ_BELL_COLD);
    return rc < 0 ? -1 : 0;
#else
    (void)word;
    errno = ENOSYS;
    return -1;
#endif
}

/* The word's value, read through the descriptor (not the mapping): 0, or -1 with errno. */
static int tq_bell_read(int fd, uint32_t *value) {
    ssize_t got;
    do {
        got = pread(fd, value, sizeof *value, 0);
    } while (got < 0 && errno == EINTR);
    if (got == (ssize_t)sizeof *value) return 0;
    if (got >= 0) errno = EFAULT;  /* shorter than the word: truncated */
    return -1;
}

/* Sleep in `tier` while the word holds `seen`, at most `timeout` seconds: TQ_BELL_RUNG when it was
 * rung (or a signal came), TQ_BELL_MOVED when it had changed already, TQ_BELL_TIMED_OUT, or -1
 * with errno. */
static int tq_bell_wait(uint32_t *word, uint32_t seen, double timeout, uint32_t tier) {
#if TQ_HAVE_FUTEX
    struct timespec ts;
    uint64_t until;
    long rc;
    if (timeout < 0) timeout = 0;
    until = tq_now_ns() + (uint64_t)(timeout * 1e9);
    ts.tv_sec = (time_t)(until / 1000000000u);
    ts.tv_nsec = (long)(until % 1000000000u);
    /* (FUTEX_WAIT_BITSET's timeout is absolute, on CLOCK_MONOTONIC) */
    rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, seen, &ts, NULL, tier);
    if (rc == 0 || errno == EINTR) return TQ_BELL_RUNG;
    if (errno == EAGAIN) return TQ_BELL_MOVED;
    if (errno == ETIMEDOUT) return TQ_BELL_TIMED_OUT;
    return -1;
#else
    (void)word; (void)seen; (void)timeout; (void)tier;
    errno = ENOSYS;
    return -1;
#endif
}

#define TQ_IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)

/* True when `p` holds a run of at least `limit` (> 0) digits: orjson reads integers beyond 64
 * bits as floats, where the standard library keeps them exact. Looks at every limit-th byte
 * first, so a typical event costs a handful of comparisons. */
static int tq_has_digit_run(const char *p, size_t n, size_t limit) {
    size_t i = limit - 1, start, end;
    while (i < n) {
        if (!TQ_IS_DIGIT(p[i])) {
            i += limit;
            continue;
        }
        start = i;
        while (start > 0 && TQ_IS_DIGIT(p[start - 1])) start--;
        end = i;
        while (end + 1 < n && TQ_IS_DIGIT(p[end + 1])) end++;
        if (end - start + 1 >= limit) return 1;
        i = end + 1 + limit;
    }
    return 0;
}

/* Batches built in memory (sqlite3_deserialize into a buffer, SQLite's "memdb" VFS, 3.36 and later)
 * and written to their loading_ file in one go: one file created per batch instead of three (the
 * batch, its rollback journal and a statement journal), and no page-by-page writes. Older SQLite
 * builds the batch in the file. */
#if SQLITE_VERSION_NUMBER >= 3036000 && !defined(SQLITE_OMIT_DESERIALIZE)
#define TQ_HAVE_MEMDB 1
#else
#define TQ_HAVE_MEMDB 0
#endif

/* Open an in-memory batch database living in *buf (capacity *cap; allocated here on first use, then
 * reused batch after batch: a fresh buffer per batch cost more in page faults than it saved). SQLite
 * grows it as needed, possibly moving it: tq_memory_batch_image says where it is now. The buffer
 * stays ours (no FREEONCLOSE), also when this fails. Returns an SQLite code. */
static int tq_open_memory_batch(sqlite3 **db, unsigned char **buf, sqlite3_int64 *cap) {
#if TQ_HAVE_MEMDB
    int rc;
    /* Past memdb's default of 1 GiB: a batch goes out at 64 MiB, but one event may be up to 1 GB. */
    sqlite3_int64 limit = (sqlite3_int64)4 << 30;
    *db = NULL;
    if (*buf == NULL) {
        *buf = (unsigned char *)sqlite3_malloc64((sqlite3_uint64)1 << 20);
        if (*buf == NULL) return SQLITE_NOMEM;
        *cap = (sqlite3_int64)sqlite3_msize(*buf);
    }
    rc = sqlite3_open_v2(":memory:", db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                         NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_deserialize(*db, "main", *buf, 0, *cap, SQLITE_DESERIALIZE_RESIZEABLE);
    if (rc == SQLITE_OK)
        sqlite3_file_control(*db, "main", SQLITE_FCNTL_SIZE_LIMIT, &limit);
    return rc;
#else
    (void)buf;
    (void)cap;
    *db = NULL;
    return SQLITE_ERROR;
#endif
}

/* Where an in-memory batch database is now, its size, and its buffer's capacity. */
static unsigned char *tq_memory_batch_image(sqlite3 *db, sqlite3_int64 *size, sqlite3_int64 *cap) {
#if TQ_HAVE_MEMDB
    unsigned char *p = sqlite3_serialize(db, "main", size, SQLITE_SERIALIZE_NOCOPY);
    *cap = p != NULL ? (sqlite3_int64)sqlite3_msize(p) : 0;
    return p;
#else
    (void)db;
    *size = *cap = 0;
    return NULL;
#endif
}


static int tq_pwrite_all(int fd, const unsigned char *p, size_t n, off_t off) {
    ssize_t w;
    while (n > 0) {
        w = pwrite(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n, off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* A finished batch image goes into its empty loading_ file in two writes: every byte but the first
 * 16 (SQLite's "SQLite format 3" magic) first, then the magic. A process killed between or during
 * them leaves a file that starts with zeros, which recovery recognises as a batch never finished,
 * hence never published. Each returns 0, or -1 with errno. */
static int tq_write_image_body(int fd, const unsigned char *p, sqlite3_int64 n) {
    if (n < 100) {  /* shorter than SQLite's file header: not an image */
        errno = EINVAL;
        return -1;
    }
    return tq_pwrite_all(fd, p + 16, (size_t)(n - 16), 16);
}

static int tq_write_image_magic(int fd, const unsigned char *p, int durable) {
    if (tq_pwrite_all(fd, p, 16, 0) != 0) return -1;
    if (durable && tq_fsync_fd(fd) != 0) return -1;
    return 0;
}

#endif /* TQ_OS_H */
