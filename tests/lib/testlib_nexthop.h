/*
 * testlib_nexthop.h - a scripted SMTP server on the test's libuv loop
 * (127.0.0.1 or another loopback address, a port the OS picks): the next
 * hop of the outbound SMTP client (net/smtpc) in unit tests.
 *
 * It answers each command line with a plausible default (MAIL before RCPT
 * before DATA, a 250 after the final dot) unless the test set an override
 * for a prefix of the line, records every octet it read (plaintext, and
 * what TLS decrypted), and counts connections, pipelined lines, messages,
 * MAIL commands in and out of TLS, and connections the client ended. Given
 * a TLS server context it understands STARTTLS (smtpc_tls as the engine),
 * which the test may refuse, follow with injected bytes or stall. Given
 * auth_user and auth_pass it answers AUTH PLAIN (with or without an
 * initial response) and AUTH LOGIN, 235 for those credentials and 535
 * otherwise (an "AUTH" override replaces its answer), and counts AUTH
 * commands, those read in plaintext, and successes. It takes BDAT chunks
 * (RFC 3030) whether or not the EHLO script lists CHUNKING, keeps their
 * octets apart (bdat_body) and answers each chunk once it is read: 554
 * without a recipient, 250 otherwise (a "BDAT" override replaces it).
 *
 * The test sets the script fields after testlib_nexthop_start and before
 * the client connects. Failures (a socket call, a line over the buffer)
 * fail the cmocka test.
 */
#ifndef HAMR_TESTS_LIB_TESTLIB_NEXTHOP_H
#define HAMR_TESTS_LIB_TESTLIB_NEXTHOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "util/buf.h"
#include "net/tls.h"

#define TESTLIB_NEXTHOP_OVERRIDES_MAX 4
#define TESTLIB_NEXTHOP_LINE_MAX 8192

/* The default EHLO reply: PIPELINING, SIZE and 8BITMIME, no STARTTLS. */
#define TESTLIB_NEXTHOP_EHLO_FULL \
    "250-test.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"

/* testlib_nexthop_override - reply with reply (len octets) to a line starting with prefix. */
struct testlib_nexthop_override {
    const char *prefix; /* "<greeting>" for the greeting, "." for the end of data */
    const char *reply;  /* "!close": close instead; "!none": say nothing */
    size_t len;
};

/* testlib_nexthop_conn - one accepted connection. */
struct testlib_nexthop_conn {
    uv_tcp_t tcp;
    struct testlib_nexthop *srv;
    struct testlib_nexthop_conn *next;
    struct tls *tls; /* after our 220 to STARTTLS */
    bool tls_up;     /* the handshake finished */
    char line[TESTLIB_NEXTHOP_LINE_MAX];
    size_t line_len;
    bool data_mode;
    bool mail_ok;      /* a MAIL was accepted in this transaction */
    unsigned rcpts_ok; /* in this transaction */
    /* AUTH in progress: 0 none, 1 LOGIN wants the user, 2 the password, 3 PLAIN's response. */
    int auth_step;
    char login_user[256];
    /* BDAT (RFC 3030): octets of the chunk still to come, and its command for the reply. */
    size_t bdat_left;
    bool bdat_last;
    char bdat_cmd[64];
    bool closing;
};

struct testlib_nexthop {
    uv_tcp_t listener;
    uint16_t port;
    /* The script. */
    const char *ehlo;     /* reply to EHLO before TLS: TESTLIB_NEXTHOP_EHLO_FULL */
    const char *ehlo_tls; /* reply to EHLO over TLS: TESTLIB_NEXTHOP_EHLO_FULL */
    struct testlib_nexthop_override ov[TESTLIB_NEXTHOP_OVERRIDES_MAX];
    size_t n_ov;
    SSL_CTX *ctx;               /* not NULL: STARTTLS is understood (borrowed) */
    bool offer_starttls;        /* with ctx: STARTTLS gets starttls_reply, else 503 */
    const char *starttls_reply; /* may carry injected bytes after the 220 */
    bool stall_handshake;       /* say 220 to STARTTLS, then ignore everything */
    const char *auth_user;      /* not NULL: AUTH accepts this user ... */
    const char *auth_pass;      /* ... with this password (else 502 to AUTH) */
    /* What it saw. */
    struct buf rx; /* every octet read, all connections (decrypted over TLS) */
    struct testlib_nexthop_conn *conns;
    unsigned n_accepted;
    unsigned n_messages;
    unsigned n_eof;       /* connections the client ended */
    unsigned n_pipelined; /* command lines read with more octets behind them */
    unsigned n_starttls;
    unsigned n_tls_up;
    unsigned n_mail_plain; /* MAIL commands read in plaintext */
    unsigned n_mail_tls;   /* MAIL commands read over TLS */
    unsigned n_auth;       /* AUTH commands */
    unsigned n_auth_clear; /* of those, read in plaintext */
    unsigned n_auth_ok;    /* answered 235 */
    char auth_mech[16];    /* the mechanism of the last AUTH */
    unsigned n_bdat;       /* BDAT commands */
    struct buf bdat_body;  /* the octets of every BDAT chunk, all connections */
    bool listener_closed;  /* after stop: the listener's close callback ran */
};

/*
 * testlib_nexthop_start - s listens on 127.0.0.1 of loop (borrowed); ctx
 * (borrowed until stop, may be NULL) makes STARTTLS understood, with
 * offer_starttls on; the EHLO replies are the test's to set.
 */
void testlib_nexthop_start(struct testlib_nexthop *s, uv_loop_t *loop, SSL_CTX *ctx);

/*
 * testlib_nexthop_start_on - testlib_nexthop_start on ip (any loopback
 * address, e.g. "127.0.0.2" or "::1") and port (0: the OS picks).
 */
void testlib_nexthop_start_on(struct testlib_nexthop *s,
                              uv_loop_t *loop,
                              SSL_CTX *ctx,
                              const char *ip,
                              uint16_t port);

/* testlib_nexthop_override - answer lines starting with prefix with reply (len octets, 0: strlen).
 */
void testlib_nexthop_override(struct testlib_nexthop *s,
                              const char *prefix,
                              const char *reply,
                              size_t len);

/* testlib_nexthop_received - has s read needle (on any connection)? */
bool testlib_nexthop_received(const struct testlib_nexthop *s, const char *needle);

/*
 * testlib_nexthop_stop - close the listener and every connection; the loop
 * frees them. s must live until listener_closed is set and conns is NULL.
 */
void testlib_nexthop_stop(struct testlib_nexthop *s);

/* testlib_nexthop_free - release what s recorded, once stop's closes ran. */
void testlib_nexthop_free(struct testlib_nexthop *s);

#endif
