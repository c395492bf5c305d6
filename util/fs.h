/* fs.h - small file-system helpers shared by the daemon and the consensus layer. */
#ifndef HAMR_UTIL_FS_H
#define HAMR_UTIL_FS_H

#include <stddef.h>
#include <sys/types.h>

/*
 * fs_mkdirs - mkdir -p dir with mode for every directory it creates; the
 * final path must be a directory. 0, or HAMR_EINVAL (empty, too long, not
 * a directory), HAMR_ENOSPACE, HAMR_EPERM, HAMR_EIO, with a sentence in
 * errmsg (may be NULL) naming the path.
 */
int fs_mkdirs(const char *dir, mode_t mode, char *errmsg, size_t errlen);

#endif
