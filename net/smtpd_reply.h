/* smtpd_reply.h - the one table of SMTP replies the inbound server sends. */
#ifndef HAMR_NET_SMTPD_REPLY_H
#define HAMR_NET_SMTPD_REPLY_H

#include <stdbool.h>
#include <stddef.h>

/* Longest reply line we build, CRLF included (RFC 5321 4.5.3.1.5: 512). */
#define SMTPD_REPLY_LINE_MAX 512

/* Every reply the server may send; index into the table in smtpd_reply.c. */
enum smtpd_reply_id {
    SMTPD_REPLY_GREETING,        /* 220 <host> ESMTP hamr */
    SMTPD_REPLY_OK,              /* 250 2.0.0 Ok */
    SMTPD_REPLY_MAIL_OK,         /* 250 2.1.0 Ok */
    SMTPD_REPLY_RCPT_OK,         /* 250 2.1.5 Ok */
    SMTPD_REPLY_DATA_GO,         /* 354 */
    SMTPD_REPLY_QUEUED,          /* 250 2.0.0 Ok: queued as <id> */
    SMTPD_REPLY_BYE,             /* 221 2.0.0 Bye */
    SMTPD_REPLY_VRFY,            /* 252 2.5.2 */
    SMTPD_REPLY_HELP,            /* 214 2.0.0 */
    SMTPD_REPLY_FORBIDDEN,       /* 221 2.7.0 HTTP and other cross-protocol input */
    SMTPD_REPLY_PREGREET,        /* 554 5.5.0 input before the greeting */
    SMTPD_REPLY_DESYNC,          /* 554 5.5.0 content before 354 */
    SMTPD_REPLY_LINE_TOO_LONG,   /* 500 5.5.2 */
    SMTPD_REPLY_BAD_SYNTAX,      /* 500 5.5.2 NUL or garbage */
    SMTPD_REPLY_BAD_UTF8,        /* 500 5.5.2 a command line that is not UTF-8 */
    SMTPD_REPLY_CMD_BARE_LF,     /* 500 5.5.2 bare LF in a command line */
    SMTPD_REPLY_CMD_BARE_CR,     /* 500 5.5.2 bare CR in a command line */
    SMTPD_REPLY_UNKNOWN_CMD,     /* 502 5.5.2 */
    SMTPD_REPLY_BAD_ORDER,       /* 503 5.5.1 Error: <arg> */
    SMTPD_REPLY_HELO_SYNTAX,     /* 501 5.5.4 */
    SMTPD_REPLY_SENDER_SYNTAX,   /* 501 5.1.7 */
    SMTPD_REPLY_RCPT_SYNTAX,     /* 501 5.1.3 */
    SMTPD_REPLY_NO_ARGS,         /* 501 5.5.4 command takes no argument */
    SMTPD_REPLY_PARAM_SYNTAX,    /* 501 5.5.4 bad value for a known parameter */
    SMTPD_REPLY_PARAM_UNKNOWN,   /* 555 5.5.4 */
    SMTPD_REPLY_PARAM_TWICE,     /* 501 5.5.4 a parameter given twice */
    SMTPD_REPLY_REQUIRETLS_TLS,  /* 530 5.7.10 REQUIRETLS outside TLS */
    SMTPD_REPLY_UTF8,            /* 553 5.6.7 */
    SMTPD_REPLY_SIZE_EXCEEDED,   /* 552 5.3.4 */
    SMTPD_REPLY_HEADER_EXCEEDED, /* 552 5.3.4 header block */
    SMTPD_REPLY_TOO_MANY_RCPTS,  /* 452 4.5.3 */
    SMTPD_REPLY_RELAY_DENIED,    /* 554 5.7.1 <rcpt>: Relay access denied */
    SMTPD_REPLY_RCPT_UNKNOWN,    /* 550 5.1.1 <rcpt>: not in the relay recipient map */
    SMTPD_REPLY_DATA_BARE_LF,    /* 550 5.5.2 */
    SMTPD_REPLY_DATA_BARE_CR,    /* 550 5.5.2 */
    SMTPD_REPLY_DATA_NUL,        /* 554 5.6.0 */
    SMTPD_REPLY_TOO_MANY_HOPS,   /* 554 5.4.6 */
    SMTPD_REPLY_TOO_MANY_ERRORS, /* 421 4.7.0 */
    SMTPD_REPLY_TIMEOUT,         /* 421 4.4.2 */
    SMTPD_REPLY_TOO_MUCH_INPUT,  /* 421 4.7.0 pipelined input over the bound */
    SMTPD_REPLY_TOO_MANY_CONNS,  /* 421 4.7.0 */
    SMTPD_REPLY_DRAINING,        /* 421 4.3.2 */
    SMTPD_REPLY_SHUTDOWN,        /* 421 4.3.2 */
    SMTPD_REPLY_NO_STORAGE,      /* 452 4.3.1 */
    SMTPD_REPLY_QUEUE_FULL,      /* 452 4.3.1 the cluster's queue limits */
    SMTPD_REPLY_TRY_AGAIN,       /* 451 4.3.0 */
    SMTPD_REPLY_LOCAL_ERROR,     /* 451 4.3.0 local resource problem */
    SMTPD_REPLY_COUNT
};

/* smtpd_reply - one row: code, RFC 3463 enhanced code ("" if none), text. */
struct smtpd_reply {
    int code;
    const char *esc;
    /* text; a "%s" in it is replaced by the reply's argument (no printf). */
    const char *text;
    bool counts_as_error; /* raises the session's error count */
};

/* smtpd_reply_get - the row for id. */
const struct smtpd_reply *smtpd_reply_get(enum smtpd_reply_id id);

/*
 * smtpd_reply_format - write "CODE ESC TEXT\r\n" into out (size outlen),
 * substituting arg (may be NULL: "") for "%s". The caller must pass only
 * printable text as arg. Truncates the text so the line, CRLF included,
 * always fits. Returns the length written (without the NUL).
 */
size_t smtpd_reply_format(enum smtpd_reply_id id, const char *arg, char *out, size_t outlen);

/*
 * smtpd_reply_for_error - the reply for a failed check_mail or submit.
 * Table ordered most severe first: shutting down or draining says 421 and
 * hangs up; no storage 452 4.3.1; every other outcome (not leader,
 * leadership lost, timeout, no quorum, busy, corrupt, unknown) 451 4.3.0,
 * because the outcome is unknown and the client must retry.
 */
enum smtpd_reply_id smtpd_reply_for_error(int err);

#endif
