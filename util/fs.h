/* fs.h - small file-system helpers shared by the daemon, the consensus layer and the body store. */
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

/*
 * fs_fsync_dir - fsync the directory dir, so that the entries created in it
 * (or removed from it) are on disk. 0, or HAMR_EIO with a sentence in errmsg
 * (may be NULL) naming the path.
 */
int fs_fsync_dir(const char *dir, char *errmsg, size_t errlen);

/*
 * fs_fsync_parent - fsync the directory that holds path (its dirname), after
 * path was created. As fs_fsync_dir.
 */
int fs_fsync_parent(const char *path, char *errmsg, size_t errlen);

#endif
