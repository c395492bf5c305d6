/*
 * fs.c - small file-system helpers: mkdir -p, fsync of a directory (what
 * makes a file's creation durable, not only its contents), and reads and
 * writes of a whole buffer, which a single read(2) or write(2) does not
 * promise (a signal, a pipe, a file system near full all cut them short).
 *
 * Paths come from the operator's configuration, never from the network.
 */
#include "util/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"

/* fs_mkdirs - mkdir -p dir; see fs.h. */
int fs_mkdirs(const char *dir, mode_t mode, char *errmsg, size_t errlen)
{
    char path[PATH_MAX];
    size_t len = hamr_strlcpy(path, dir, sizeof(path));
    if (len == 0 || len >= sizeof(path)) {
        if (errmsg != NULL)
            snprintf(errmsg, errlen, "data directory: empty or too long");
        return HAMR_EINVAL;
    }
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char saved = path[i];
        path[i] = '\0';
        if (mkdir(path, mode) != 0 && errno != EEXIST) {
            int e = errno;
            if (errmsg != NULL)
                snprintf(errmsg, errlen, "data directory: mkdir %s: %s", path, strerror(e));
            return e == ENOSPC ? HAMR_ENOSPACE : e == EACCES ? HAMR_EPERM : HAMR_EIO;
        }
        path[i] = saved;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        if (errmsg != NULL)
            snprintf(errmsg, errlen, "data directory: %s is not a directory", dir);
        return HAMR_EINVAL;
    }
    return 0;
}

/* fs_fsync_dir - fsync a directory; see fs.h. */
int fs_fsync_dir(const char *dir, char *errmsg, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (errmsg != NULL)
            snprintf(errmsg, errlen, "fsync directory %s: %s", dir, strerror(e));
        return HAMR_EIO;
    }
    close(fd);
    return 0;
}

/* fs_fsync_parent - fsync the directory holding path; see fs.h. */
int fs_fsync_parent(const char *path, char *errmsg, size_t errlen)
{
    char parent[PATH_MAX];
    size_t len = hamr_strlcpy(parent, path, sizeof(parent));
    if (len >= sizeof(parent)) {
        if (errmsg != NULL)
            snprintf(errmsg, errlen, "fsync directory: path too long");
        return HAMR_EINVAL;
    }
    while (len > 1 && parent[len - 1] == '/') /* "a/b/" is "a/b" */
        parent[--len] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == NULL)
        return fs_fsync_dir(".", errmsg, errlen);
    if (slash == parent)
        slash[1] = '\0'; /* "/x": the root */
    else
        *slash = '\0';
    return fs_fsync_dir(parent, errmsg, errlen);
}

/* fs_read_full - n octets, short reads and EINTR retried; see fs.h. */
ssize_t fs_read_full(int fd, void *buf, size_t n, off_t off)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = off >= 0 ? pread(fd, p + done, n - done, off + (off_t)done)
                             : read(fd, p + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

/* fs_writev_full - every octet of iov, short writes and EINTR retried; see fs.h. */
int fs_writev_full(int fd, struct iovec *iov, int iovcnt, off_t off)
{
    for (;;) {
        /* Empty entries first: a write of nothing returns 0, which means "no room". */
        while (iovcnt > 0 && iov->iov_len == 0) {
            iov++;
            iovcnt--;
        }
        if (iovcnt == 0)
            return 0;
        ssize_t w = off >= 0 ? pwritev(fd, iov, iovcnt, off) : writev(fd, iov, iovcnt);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -ENOSPC;
        if (off >= 0)
            off += w;
        while (iovcnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
}

/* fs_table_line - the next entry of a table file; see fs.h. */
int fs_table_line(FILE *f,
                  const char *path,
                  char *line,
                  size_t size,
                  unsigned *lineno,
                  char **start,
                  char *errmsg,
                  size_t errlen)
{
    while (fgets(line, (int)size, f) != NULL) {
        (*lineno)++;
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        } else if (!feof(f)) {
            snprintf(errmsg, errlen, "%s:%u: line longer than %zu octets", path, *lineno, size - 2);
            return HAMR_EINVAL;
        }
        while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        char *s = line + strspn(line, " \t");
        if (*s == '\0' || *s == '#')
            continue;
        *start = s;
        return 1;
    }
    if (ferror(f)) {
        snprintf(errmsg, errlen, "%s:%u: read error", path, *lineno);
        return HAMR_EIO;
    }
    return 0;
}
