/* fs.h - small file-system helpers shared by the daemon, the consensus layer and the body store. */
#ifndef HAMR_UTIL_FS_H
#define HAMR_UTIL_FS_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/uio.h>

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

/*
 * fs_read_full - n octets from fd into buf, retrying short reads and EINTR:
 * at offset off (pread) when off >= 0, else from the file position (read:
 * a pipe). Returns the octets read, fewer than n only at the end of the
 * file, or -errno (the caller decides what the errno means to it).
 */
ssize_t fs_read_full(int fd, void *buf, size_t n, off_t off);

/*
 * fs_writev_full - every octet of iov[0..iovcnt) to fd, retrying short
 * writes and EINTR: at offset off (pwritev) when off >= 0, else at the file
 * position (writev: a pipe). The iovec array is borrowed and used up: its
 * entries are changed on the way. 0, or -errno; a write that takes no
 * octet of a non-empty vector is -ENOSPC (a full file system).
 */
int fs_writev_full(int fd, struct iovec *iov, int iovcnt, off_t off);

/*
 * fs_table_line - the next entry of a line-oriented table file (the
 * credentials and map files): reads lines from f into line (size octets,
 * room for the longest line plus its newline and NUL), counting them in
 * *lineno, and skips blank lines and '#' comments. 1: *start points at the
 * entry's first non-blank octet inside line, a trailing CR, blanks and tabs
 * removed; 0: the end of the file; or HAMR_EINVAL (a line longer than
 * size - 2 octets) and HAMR_EIO (a read error) with "PATH:LINE: reason" in
 * errmsg. f and path are borrowed. The caller wipes line if it holds secrets.
 */
int fs_table_line(FILE *f,
                  const char *path,
                  char *line,
                  size_t size,
                  unsigned *lineno,
                  char **start,
                  char *errmsg,
                  size_t errlen);

#endif
