/* err.h - hamr error codes: one X-macro list, codes and strings together. */
#ifndef HAMR_UTIL_ERR_H
#define HAMR_UTIL_ERR_H

/*
 * Functions return 0 on success and a negative HAMR_E* code on failure.
 * Codes of libraries (UV_E*, RAFT_*, errno, OpenSSL) are converted into these
 * in the module that made the call and never travel further.
 */
#define HAMR_ERR_MAP(X)                                                     \
    X(NOMEM, 1, "out of memory")                                            \
    X(INVAL, 2, "invalid argument")                                         \
    X(IO, 3, "I/O error")                                                   \
    X(NOTLEADER, 4, "not the leader")                                       \
    X(LEADERSHIPLOST, 5, "leadership lost, outcome unknown")                \
    X(TIMEDOUT, 6, "timed out")                                             \
    X(NOSPACE, 7, "insufficient storage")                                   \
    X(TOOBIG, 8, "too big")                                                 \
    X(PROTO, 9, "protocol error")                                           \
    X(NOTFOUND, 10, "not found")                                            \
    X(SHUTDOWN, 11, "shutting down")                                        \
    X(BUSY, 12, "busy, try again")                                          \
    X(EXIST, 13, "already exists")                                          \
    X(CONNECT, 14, "connection failed")                                     \
    X(NOQUORUM, 15, "no leader or no quorum")                               \
    X(DRAINING, 16, "node is draining")                                     \
    X(CANCELED, 17, "canceled")                                             \
    X(VERSION, 18, "unsupported format version")                           \
    X(CORRUPT, 19, "corrupt data")                                          \
    X(CANTCHANGE, 20, "a membership change is already in progress")        \
    X(PERM, 21, "not permitted")                                             \
    X(INDOUBT, 22, "outcome unknown: it may still commit")                  \
    X(QUEUEFULL, 23, "mail queue full")

enum {
#define HAMR_ERR_ENUM(name, num, text) HAMR_E##name = -(num),
    HAMR_ERR_MAP(HAMR_ERR_ENUM)
#undef HAMR_ERR_ENUM
};

/* hamr_strerror - text for a HAMR_E* code (or "ok" for 0). Never NULL. */
const char *hamr_strerror(int err);

/* hamr_errname - symbolic name ("HAMR_ENOMEM") for a code. Never NULL. */
const char *hamr_errname(int err);

#endif
