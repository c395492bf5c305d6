/* err.c - strings for the HAMR_E* codes. */
#include "util/err.h"

const char *hamr_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
#define HAMR_ERR_STR(name, num, text) \
    case -(num):                      \
        return text;
        HAMR_ERR_MAP(HAMR_ERR_STR)
#undef HAMR_ERR_STR
    }
    return "unknown error";
}

const char *hamr_errname(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define HAMR_ERR_NAME(name, num, text) \
    case -(num):                       \
        return "HAMR_E" #name;
        HAMR_ERR_MAP(HAMR_ERR_NAME)
#undef HAMR_ERR_NAME
    }
    return "HAMR_E?";
}
