/*
 * fs.c - small file-system helpers: mkdir -p, fsync of a directory (what
 * makes a file's creation durable, not only its contents).
 *
 * Paths come from the operator's configuration, never from the network.
 */
#include "util/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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
