/*
 * fs.c - small file-system helpers: mkdir -p.
 *
 * Paths come from the operator's configuration, never from the network.
 */
#include "util/fs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
