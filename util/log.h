/* log.h - one line per event: time, severity, then key=value text. */
#ifndef HAMR_UTIL_LOG_H
#define HAMR_UTIL_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* log_set_level - messages above this level are dropped. Default INFO. */
void log_set_level(enum log_level level);

/* log_parse_level - "error", "warn", "info", "debug"; returns -1 if unknown. */
int log_parse_level(const char *name);

/* log_set_ident - prefix every line with this (e.g. "node=1"); copied. */
void log_set_ident(const char *ident);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/*
 * log_printable - copy untrusted text into out (size outlen) for logging:
 * at most outlen-1 bytes, control and non-ASCII bytes replaced by '?'.
 * Returns out.
 */
char *log_printable(char *out, size_t outlen, const char *in, size_t inlen);

#endif
