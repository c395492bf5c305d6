/* log.c - line logging to stderr with a timestamp and a node ident. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util/common.h"
#include "util/log.h"

static enum log_level log_level_max = LOG_LEVEL_INFO;
static char log_ident[64];

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    log_level_max = level;
}

int log_parse_level(const char *name)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(log_level_names); i++)
        if (strcmp(name, log_level_names[i]) == 0)
            return (int)i;
    return -1;
}

void log_set_ident(const char *ident)
{
    hamr_strlcpy(log_ident, ident, sizeof(log_ident));
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > log_level_max)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s%s%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_level_names[level],
                     log_ident[0] ? " " : "", log_ident);
    if (n < 0 || (size_t)n >= sizeof(line))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

char *log_printable(char *out, size_t outlen, const char *in, size_t inlen)
{
    size_t j = 0;
    if (outlen == 0)
        return out;
    for (size_t i = 0; i < inlen && j + 1 < outlen; i++) {
        unsigned char c = (unsigned char)in[i];
        out[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[j] = '\0';
    return out;
}
