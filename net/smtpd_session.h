/* smtpd_session.h - one inbound SMTP conversation as a state machine, with no socket. */
#ifndef HAMR_NET_SMTPD_SESSION_H
#define HAMR_NET_SMTPD_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/smtpd.h"

struct smtpd_auth;

/*
 * smtpd_state - where a session is. Legal transitions:
 *
 *   CONNECTED  -> GREETED (greeting sent) | CLOSING (pregreet input, shutdown)
 *   GREETED    -> READY (HELO/EHLO) | GREETED (STARTTLS) | CLOSING
 *   READY      -> MAIL (MAIL accepted) | READY (HELO/EHLO/RSET) | CLOSING
 *                 | GREETED (STARTTLS: a fresh start inside TLS, RFC 3207 4.2)
 *   MAIL       -> RCPT (first RCPT accepted) | READY (RSET/HELO/EHLO) | CLOSING
 *   RCPT       -> DATA (354 sent) | READY (RSET/HELO/EHLO) | CLOSING
 *   DATA       -> COMMITTING (body handed to the sink) | READY (body rejected) | CLOSING
 *   COMMITTING -> READY (sink called back) | CLOSING
 *   CLOSING    is final.
 *
 * Invariants: a transaction exists exactly in MAIL, RCPT, DATA and COMMITTING
 * (and in CLOSING if the session closed while a submit was pending); at
 * most one submit is pending; reading is paused while one is. An AUTH
 * password check in flight (io.auth_check) is waited for the same way, in
 * the state the session was in: no input processed, no client timeout.
 */
enum smtpd_state {
    SMTPD_STATE_CONNECTED,  /* accepted; greeting not yet sent */
    SMTPD_STATE_GREETED,    /* 220 sent; no HELO/EHLO yet */
    SMTPD_STATE_READY,      /* after HELO/EHLO, no transaction */
    SMTPD_STATE_MAIL,       /* MAIL accepted, no recipient yet */
    SMTPD_STATE_RCPT,       /* at least one recipient accepted */
    SMTPD_STATE_DATA,       /* 354 sent; reading the body */
    SMTPD_STATE_BDAT,       /* reading the octets of a BDAT chunk (RFC 3030) */
    SMTPD_STATE_COMMITTING, /* body complete; submit in flight */
    SMTPD_STATE_CLOSING,    /* hanging up; no more input is looked at */
    SMTPD_STATE_COUNT
};

/*
 * smtpd_session_io - how a session reaches its transport. The owner (the
 * TCP server, or a test) fills it in; the session borrows data.
 */
struct smtpd_session_io {
    void *data;
    /* write - queue len octets for the client; copies buf. 0 or HAMR_E*. */
    int (*write)(void *data, const void *buf, size_t len);
    /* pause - stop delivering input (uv_read_stop). */
    void (*pause)(void *data);
    /* resume - deliver input again. */
    void (*resume)(void *data);
    /*
     * close - send what was written, then hang up. Called at most once.
     * The owner must later call smtpd_session_free(), not from inside close.
     */
    void (*close)(void *data);
    /* set_timer - call smtpd_session_timeout() in ms from now; 0 cancels. */
    void (*set_timer)(void *data, uint64_t ms);
    /* write_queued - octets written but not yet sent. May be NULL (always 0). */
    size_t (*write_queued)(void *data);
    /*
     * starttls - called right after "220 2.0.0 Ready to start TLS" was
     * written: from now on the owner runs the TLS handshake on the stream,
     * encrypts every write and hands in only decrypted input. NULL: STARTTLS
     * is not offered. 0, or HAMR_E* and the session hangs up.
     */
    int (*starttls)(void *data);
    /*
     * auth_check - check pass (pass_len octets) for user (user_len octets)
     * against auth off the caller's thread, and later, on the caller's
     * thread and never from inside this call, call done(arg, rc) with 0
     * (good) or HAMR_EPERM. user and pass are borrowed for the call only:
     * the owner copies them (and wipes its copy). Returns 0, or HAMR_E* and
     * done will not be called. NULL: the session calls smtpd_auth_verify()
     * itself, synchronously.
     */
    int (*auth_check)(void *data,
                      const struct smtpd_auth *auth,
                      const char *user,
                      size_t user_len,
                      const char *pass,
                      size_t pass_len,
                      void (*done)(void *arg, int rc),
                      void *arg);
    /*
     * now - the owner's monotonic clock in ms (the deadline of DATA under
     * policy->min_data_rate is kept in it). NULL: CLOCK_MONOTONIC.
     */
    uint64_t (*now)(void *data);
    /*
     * auth_rate - count one AUTH command of this client against its
     * per-client rate. 0: go on; HAMR_EBUSY: over the rate, the session
     * answers 450 4.7.1 and runs no password check. NULL: no AUTH rate.
     */
    int (*auth_rate)(void *data);
    /*
     * stressed - is the server under load now? While it is, every new
     * command or DATA wait is at most policy->stress_timeout_ms. NULL: never.
     */
    bool (*stressed)(void *data);
};

struct smtpd_session;

/* Output above this stops reading; at or below SMTPD_SESSION_OUT_LOW it resumes. */
#define SMTPD_SESSION_OUT_HIGH (64 * 1024)
#define SMTPD_SESSION_OUT_LOW (16 * 1024)
/* Unparsed input held while paused; a client that sends more gets 421. */
#define SMTPD_SESSION_INPUT_MAX (256 * 1024)

/*
 * smtpd_session_new - a session in CONNECTED for the client at client_addr
 * (text, copied). policy is borrowed for the session's life; sink and io are
 * copied (their data pointers borrowed). Logs the connect. Returns 0 or
 * HAMR_ENOMEM.
 */
int smtpd_session_new(const struct smtpd_policy *policy,
                      const struct smtpd_sink *sink,
                      const struct smtpd_session_io *io,
                      const char *client_addr,
                      struct smtpd_session **out);

/* smtpd_session_greet - send the 220 greeting; input before this is a pregreet violation. */
void smtpd_session_greet(struct smtpd_session *s);

/*
 * smtpd_session_input - octets from the client (copied). Every complete
 * command is processed in order (RFC 2920); what cannot be processed yet
 * (a submit is pending, or output is over the high-water mark) is kept.
 */
void smtpd_session_input(struct smtpd_session *s, const void *data, size_t len);

/* smtpd_session_write_done - output drained a little: maybe resume reading. */
void smtpd_session_write_done(struct smtpd_session *s);

/* smtpd_session_timeout - the deadline of set_timer passed: 421 4.4.2 and close. */
void smtpd_session_timeout(struct smtpd_session *s);

/*
 * smtpd_session_shutdown - the server is closing: 421 4.3.2 and close now,
 * or, with a submit or an AUTH check pending, right after the reply to it.
 */
void smtpd_session_shutdown(struct smtpd_session *s);

/*
 * smtpd_session_free - the owner is done with the transport (after close,
 * or when the client went away). The session makes no more io calls. If a
 * submit or an AUTH check is pending the session lives on, detached, until
 * the sink (or io.auth_check's done) calls back, and frees itself then.
 * Returns NULL.
 */
struct smtpd_session *smtpd_session_free(struct smtpd_session *s);

/* smtpd_session_state - the current state. */
enum smtpd_state smtpd_session_state(const struct smtpd_session *s);

/* smtpd_state_name - "CONNECTED", "READY", ... for logs and tests. */
const char *smtpd_state_name(enum smtpd_state state);

/* smtpd_session_timeout_ms - the client deadline the session wants now; 0: none. */
uint64_t smtpd_session_timeout_ms(const struct smtpd_session *s);

/* smtpd_session_tls - true once STARTTLS was accepted. */
bool smtpd_session_tls(const struct smtpd_session *s);

/* smtpd_session_submit_pending - true while the sink holds a message of this session. */
bool smtpd_session_submit_pending(const struct smtpd_session *s);

/* smtpd_session_auth_pending - true while an io.auth_check has not called back. */
bool smtpd_session_auth_pending(const struct smtpd_session *s);

#endif
