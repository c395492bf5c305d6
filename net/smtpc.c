/*
 * smtpc.c - the outbound SMTP client and its per-destination connection pool.
 *
 * Happy path: smtpc_pool_deliver queues a job on its destination (host:port)
 * and arms a zero timer ("kick"), so that no callback ever runs inside
 * smtpc_pool_deliver. The kick hands each queued job to an idle connection of
 * that destination, or opens a new one while fewer than max_conns_per_dest
 * exist. A new connection resolves the next hop into an ordered list of
 * targets (the config's smtpc_resolver; without one, literals as they are
 * and uv_getaddrinfo for names), connects to the first, reads the 220
 * greeting, says EHLO (HELO after a 5xx to EHLO) and then runs
 * transactions: MAIL, RCPT per recipient, DATA, the body, the final dot.
 * With PIPELINING, MAIL + RCPTs + DATA go out in one write and the replies
 * are matched in order (RFC 2920 3.1). With CHUNKING (RFC 3030) the body
 * goes in BDAT chunks instead, as it is (no dot-stuffing, no final dot),
 * once the RCPT replies showed a recipient accepted; with PIPELINING each
 * chunk goes as soon as the last is written, without it once the last is
 * answered. After a transaction the connection takes the next job of its
 * destination; without one it idles for idle_timeout_ms, then says QUIT.
 * After max_msgs_per_conn transactions it says QUIT as well.
 *
 * STARTTLS: each destination carries a TLS policy (part of its key). After
 * EHLO, when STARTTLS is offered, the client sends it; on 220 it throws away
 * whatever plaintext came after the 220 (response injection, SECURITY.md
 * S21), starts a TLS engine over memory BIOs (tls.c) and from then on
 * every octet read is fed to it and every octet written comes out of it.
 * The handshake runs as reads arrive, under the command timeout; then EHLO
 * again, and only the new extension list counts. Under MAY, no STARTTLS
 * means plaintext; under ENCRYPT and VERIFY it means SMTPC_TEMP before any
 * MAIL is written (S17). A refused STARTTLS or a failed handshake defers the
 * attempt under every policy and discards the connection. Each connection
 * keeps an enum smtpc_tls_state, set where TLS comes up or where the reason
 * it did not becomes known, and every result carries it.
 *
 * DANE (policies DANE and DANE_ONLY, RFC 7672): the resolve asks for TLSA
 * records (smtpc_resolve_opts.dane). Under DANE_ONLY the targets without
 * usable records are dropped when the route comes (none left: deferred,
 * SMTPC_TLS_STATE_DANE_UNUSABLE). A target with records needs STARTTLS, and
 * the handshake runs with OpenSSL's DANE (tls_dane): the certificate must
 * match one of them, or the attempt is deferred (DANE_FAILED) before any
 * MAIL, and never goes on in plaintext. A target without records under
 * DANE is handled as under MAY.
 *
 * Envelope extensions (net/smtp_ext.h): the EHLO list says whether the
 * next hop takes DSN (RFC 3461), SMTPUTF8 (RFC 6531) and REQUIRETLS (RFC
 * 8689). DSN parameters (RET=, ENVID=, NOTIFY=, ORCPT=) go only to a next
 * hop that offers DSN, and a recipient it took is marked dsn_passed: the
 * notices are then its to send. A message that needs SMTPUTF8 is never
 * downgraded: a next hop without it fails every recipient for good (5.6.7)
 * before MAIL. A message with REQUIRETLS has destinations of its own, whose
 * connections need TLS and check the certificate whatever the policy (a
 * target with usable TLSA records by DANE, any other by PKIX); an MX
 * lookup neither DNSSEC nor MTA-STS enforce protected, no STARTTLS,
 * a failed handshake or check, or a next hop that does not offer
 * REQUIRETLS fails every recipient for good (5.7.30), at the first host
 * where it happens (smtpc_conn_requiretls_fail says why no other MX).
 *
 * Bodies: given whole (borrowed) or by a source (smtpc_source) that hands
 * over one chunk at a time. With a source the client asks for a chunk only
 * when the last one is written: read, fill (dot-stuffing), write, read again,
 * so a delivery holds one chunk of the body and one of wire form. A chunk
 * that fails (unreadable, or the SHA-256 of the whole did not match) drops
 * the connection before the final dot: the next hop discards the partial
 * message and the attempt is SMTPC_TEMP.
 *
 * AUTH (RFC 4954): a destination with credentials (part of its key)
 * authenticates once per connection, after the last EHLO and before the
 * first MAIL: AUTH PLAIN with the initial response (RFC 4616), else AUTH
 * LOGIN (user name and password each answering a 334). Only inside TLS
 * unless the config says auth_plaintext: under MAY with credentials, a
 * next hop without STARTTLS is deferred, as one under ENCRYPT is, and the
 * password never goes out. 235 makes the connection READY; any other reply
 * defers the job and discards the connection, and since EHLO was accepted
 * no other address is tried (Postfix: "SASL authentication failed",
 * deferred). The commands that carry credentials are logged (debug) as
 * "AUTH PLAIN ********" and the like, and their buffers are wiped.
 *
 * Trying the next address (Postfix smtp_connect.c): while no EHLO or HELO
 * has been accepted and no TLS begun, a failure of a connection that
 * carries a job (connect refused, timeout, lost connection, malformed
 * reply, a refused greeting, EHLO or HELO, a 421) moves the job on to the
 * next target while address_limit and session_limit allow. A libuv TCP
 * handle cannot connect twice, so moving on means a fresh smtpc_conn: the
 * old one leaves its destination at once and the new one joins it, taking
 * the job and the rest of the attempt (struct smtpc_attempt). After EHLO is
 * accepted nothing moves on: the server has spoken for the mail. A route
 * that is TEMP or PERM (e.g. a null MX) decides every recipient without a
 * connection.
 *
 * Failure modes: a 4xx/5xx reply decides the recipients it applies to
 * (SMTPC_TEMP/SMTPC_PERM). Connection failure, timeout, EOF, a malformed reply
 * or a reply we did not ask for (yet) decides every recipient still open as
 * SMTPC_TEMP, and the connection is discarded: nothing is ever marked
 * delivered unless a well-formed 2xx answered the final dot.
 *
 * Owns: the pool owns its destinations, their queued jobs and connections.
 * A connection owns its libuv handles (embedded, freed only after their close
 * callbacks), its reply parser, a 64 KiB wire-form chunk buffer, its TLS engine
 * after STARTTLS and at most one job. The pool holds one reference to the
 * client SSL_CTX. Messages are borrowed from the caller until the job's callback.
 *
 * Errors: smtpc_pool_deliver returns HAMR_EINVAL (bad argument or an address
 * that cannot be put on a command line), HAMR_ENOMEM, HAMR_ESHUTDOWN.
 * Everything later is reported per recipient through the callback.
 *
 * Security: replies are untrusted input, parsed by smtpc_reply.c with bounded
 * lines and line counts. Reply text is kept printable and logged through
 * log_printable. Envelope addresses are checked again before they go on a
 * command line (SECURITY.md S10): no control characters, no '<' or '>'.
 * Bodies are sent CRLF-only and dot-stuffed (smtpc_body.c).
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <uv.h>

#include "util/b64.h"
#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/peak.h"
#include "util/log.h"
#include "net/smtp_ext.h"
#include "net/smtpc.h"
#include "net/smtpc_auth.h"
#include "net/smtpc_body.h"
#include "net/smtpc_reply.h"
#include "net/tls.h"

#define SMTPC_CHUNK_MAX (64 * 1024) /* body bytes per write */
#define SMTPC_BDAT_HEAD_MAX 32      /* "BDAT 65536 LAST\r\n", in front of its chunk */
#define SMTPC_ADDR_MAX 256          /* RFC 5321 4.5.3.1.3: path, without <> here */
#define SMTPC_CMD_LINE_MAX 512      /* RFC 5321 4.5.3.1.4, our lines fit easily */
/*
 * RFC 3461 4: DSN parameters lengthen MAIL by up to 100 octets and RCPT by
 * up to 500 (more here, since xtext may take three octets for one).
 */
#define SMTPC_RCPT_LINE_MAX \
    (SMTPC_CMD_LINE_MAX + SMTPC_ADDR_MAX + SMTP_XTEXT_MAX(SMTP_ORCPT_MAX) + 64)

/*
 * The connection states. A connection only moves forward through
 * CONNECTING -> GREETING -> EHLO [-> HELO | -> STARTTLS -> TLS -> EHLO]
 * [-> AUTH | -> AUTH_LOGIN -> AUTH_USER -> AUTH] -> READY, then loops
 * READY -> MAIL -> RCPT -> DATA -> BODY -> DOT -> READY, or with CHUNKING
 * READY -> MAIL -> RCPT -> BDAT -> READY, where a failed transaction ends
 * in RSET -> READY instead. READY without a job is idle.
 * Any state may go to QUIT (polite end) or CLOSING (discard); CLOSING is
 * final. n_expected counts replies owed for commands already written; a
 * reply while it is zero is a protocol error.
 */
enum smtpc_state {
    SMTPC_STATE_CONNECTING, /* resolving and TCP connect */
    SMTPC_STATE_GREETING,   /* waiting for 220 */
    SMTPC_STATE_EHLO,
    SMTPC_STATE_HELO,
    SMTPC_STATE_READY, /* between transactions */
    SMTPC_STATE_MAIL,
    SMTPC_STATE_RCPT, /* conn->rcpt_idx says which reply is next */
    SMTPC_STATE_DATA, /* waiting for 354 */
    SMTPC_STATE_BODY, /* writing the body; no reply owed */
    SMTPC_STATE_DOT,  /* waiting for the reply to the final dot */
    SMTPC_STATE_BDAT, /* writing BDAT chunks, their replies owed (CHUNKING) */
    SMTPC_STATE_RSET,
    SMTPC_STATE_QUIT,
    SMTPC_STATE_STARTTLS,   /* waiting for 220 to STARTTLS */
    SMTPC_STATE_TLS,        /* TLS handshake; no reply owed */
    SMTPC_STATE_AUTH,       /* waiting for 235 to AUTH PLAIN, or to the LOGIN password */
    SMTPC_STATE_AUTH_LOGIN, /* waiting for 334 to AUTH LOGIN */
    SMTPC_STATE_AUTH_USER,  /* waiting for 334 to the LOGIN user name */
    SMTPC_STATE_CLOSING,
};

static const char *const smtpc_state_names[] = {
    "CONNECTING", "GREETING", "EHLO",       "HELO",      "READY",   "MAIL", "RCPT",
    "DATA",       "BODY",     "DOT",        "BDAT",      "RSET",    "QUIT", "STARTTLS",
    "TLS",        "AUTH",     "AUTH_LOGIN", "AUTH_USER", "CLOSING",
};

/* What a connection waits for in each state, for timeout and EOF texts. */
static const char *const smtpc_state_waits[] = {
    "connect",
    "greeting",
    "reply to EHLO",
    "reply to HELO",
    "next message",
    "reply to MAIL FROM",
    "reply to RCPT TO",
    "reply to DATA",
    "body write",
    "reply to end of data",
    "reply to BDAT",
    "reply to RSET",
    "reply to QUIT",
    "reply to STARTTLS",
    "TLS handshake",
    "reply to AUTH",
    "reply to AUTH LOGIN",
    "reply to the AUTH LOGIN user name",
    "close",
};

_Static_assert(HAMR_ARRAY_LEN(smtpc_state_names) == SMTPC_STATE_CLOSING + 1, "state names");
_Static_assert(HAMR_ARRAY_LEN(smtpc_state_waits) == SMTPC_STATE_CLOSING + 1, "state waits");

/* Where a recipient is within one attempt. */
enum smtpc_rcpt_state {
    SMTPC_RCPT_OPEN = 0, /* no reply yet */
    SMTPC_RCPT_ACCEPTED, /* 2xx to RCPT, waiting for the dot */
    SMTPC_RCPT_DONE,     /* result decided */
};

struct smtpc_dest;

/*
 * smtpc_attempt - one job's walk through the addresses of its next hop,
 * handed from connection to connection as each one fails before EHLO.
 */
struct smtpc_attempt {
    struct smtpc_target *targets; /* owned; NULL until the route came */
    size_t n;                     /* targets, at most address_limit */
    size_t next;                  /* the next to connect to; also how many were tried */
    unsigned n_sessions;          /* greetings read, whatever they said */
};

/*
 * smtpc_group - destinations counted together (smtpc_delivery.group): their
 * deliveries queued or running and their connections, closing ones too.
 * Held by each of its destinations and jobs.
 */
struct smtpc_group {
    struct smtpc_group *next; /* in pool->groups */
    unsigned refs;
    unsigned per_conn; /* deliveries per connection; 0: no cap */
    unsigned n_jobs;
    unsigned n_conns;
    unsigned n_quitting; /* of n_conns, those that said QUIT */
    unsigned hold_ms;    /* the span of jobs; 0: the cap counts n_jobs alone */
    struct peak jobs;    /* n_jobs lately */
    char key[];
};

/* smtpc_job - one smtpc_pool_deliver call, queued or running. */
struct smtpc_job {
    struct smtpc_job *next; /* in the destination's queue */
    struct smtpc_pool *pool;
    struct smtpc_group *group;   /* counted there while queued or running; NULL: none */
    const struct smtpc_msg *msg; /* borrowed until cb */
    smtpc_done_cb cb;
    void *arg;
    struct smtpc_rcpt_result *res; /* msg->n_rcpts entries */
    unsigned char *rstate;         /* enum smtpc_rcpt_state per recipient */
    unsigned n_tried;              /* addresses tried for it; 1 on a reused connection */
};

/* smtpc_conn - one connection to a next hop. */
struct smtpc_conn {
    struct smtpc_pool *pool;
    struct smtpc_dest *dest; /* NULL once CLOSING */
    struct smtpc_conn *next; /* in dest->conns */
    unsigned long long id;
    enum smtpc_state state;
    uv_tcp_t tcp;
    uv_timer_t timer; /* the deadline of the current state */
    uv_getaddrinfo_t gai;
    uv_connect_t connect_req;
    bool gai_pending;
    bool rsv_pending; /* the config's resolver owes smtpc_conn_route_cb */
    void *rsv_handle; /* the resolver's, for cancel */
    struct smtpc_attempt att;
    char host[SMTPC_HOST_MAX + 1]; /* the target's host: results, logs, SNI */
    char ip[64];                   /* the target's address, for logs */
    uint16_t rport;                /* the target's port, for logs */
    int handles_open;              /* close callbacks still to come once CLOSING */
    struct smtpc_reply_parser parser;
    unsigned n_expected; /* replies owed for commands written */
    unsigned n_avail;    /* of those, how many the current read may answer */
    unsigned ext;        /* SMTPC_EXT_* from EHLO */
    uint64_t size_limit;
    unsigned n_msgs;     /* transactions started */
    bool group_quit;     /* counted in its group's n_quitting */
    uint64_t idle_since; /* READY without a job since (uv_now) */
    char remote[128];
    struct smtpc_job *job;
    /* The transaction in progress. */
    size_t rcpt_idx;
    size_t n_accepted;
    bool mail_ok;
    bool dot_only;  /* 354 though no recipient was accepted: send "." alone */
    bool dot_reply; /* the server answered the final dot: no RSET needed */
    /* BDAT (CHUNKING offered): chunks written and answered, the LAST one written, a refusal. */
    bool bdat;
    unsigned bdat_sent;
    unsigned bdat_answered;
    bool bdat_last;
    bool bdat_failed;
    struct smtpc_body body;
    bool src_pending;               /* a chunk was asked of the message's source and has not come */
    struct tls *tls;                /* after a 220 to STARTTLS; freed with the connection */
    bool tls_up;                    /* handshake done: all I/O goes through tls */
    char tls_desc[96];              /* for results and logs; "none" without TLS */
    enum smtpc_tls_state tls_state; /* for results: set where TLS comes up or why it did not */
    char rbuf[4096];
    char pbuf[4096]; /* plaintext out of tls */
    /* Wire form; with BDAT its command goes in front, so that both go in one write. */
    uint8_t chunk[SMTPC_BDAT_HEAD_MAX + SMTPC_CHUNK_MAX];
};

/* smtpc_dest - the jobs and connections of one host:port. */
struct smtpc_dest {
    struct smtpc_dest *next;
    struct smtpc_pool *pool;
    char host[SMTPC_HOST_MAX + 1];
    uint16_t port;
    enum smtpc_tls_policy policy;
    /* The name the certificate must match (VERIFY); "": each target's host. */
    char verify_host[SMTPC_HOST_MAX + 1];
    /*
     * REQUIRETLS (RFC 8689): the messages of d demand verified TLS and a
     * next hop that offers REQUIRETLS; d's connections check the
     * certificate whatever the policy (smtpc_conn_verify), and never carry
     * a message without the demand, nor one with it a connection that
     * did not check.
     */
    bool requiretls;
    /* Credentials (auth): AUTH after the last EHLO; wiped when d is freed. */
    bool auth;
    char auth_user[SMTPC_AUTH_USER_MAX + 1];
    char auth_pass[SMTPC_AUTH_PASS_MAX + 1];
    /* MTA-STS MX patterns (smtpc_resolve_opts), each NUL-ended, one after the other. */
    char *patterns;
    const char **pattern_v;
    size_t n_patterns;
    struct smtpc_job *q_head, *q_tail;
    struct smtpc_conn *conns;
    unsigned n_conns;
    struct smtpc_group *group; /* NULL: none */
};

struct smtpc_pool {
    uv_loop_t *loop;
    struct smtpc_config cfg; /* cfg.tls_ctx is NULL: the pool's reference is tls_ctx */
    SSL_CTX *tls_ctx;        /* NULL: no STARTTLS */
    bool tls_dane;           /* DANE enabled on tls_ctx (tls_client_ctx_dane) */
    struct smtpc_stats stats;
    struct smtpc_dest *dests;
    struct smtpc_group *groups;
    uv_timer_t kick; /* zero timer: dispatch queued jobs outside callers' stacks */
    size_t n_active; /* jobs queued or running */
    size_t n_alive;  /* connections not yet freed, plus the kick timer */
    unsigned long long next_id;
    bool closing;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* smtpc_cmd_write_req - a write and its private copy of the bytes. */
struct smtpc_cmd_write_req {
    uv_write_t req;
    struct smtpc_conn *conn;
    size_t len;
    bool body; /* a body chunk: its completion sends the next one */
    char data[];
};

static void smtpc_conn_next(struct smtpc_conn *c);
static void smtpc_conn_body_next(struct smtpc_conn *c);
static void smtpc_conn_source_read(struct smtpc_conn *c);
static void smtpc_conn_close(struct smtpc_conn *c);
static void smtpc_pool_kick(struct smtpc_pool *p);
static void smtpc_dest_free(struct smtpc_dest *d);
static void smtpc_pool_maybe_free(struct smtpc_pool *p);
static bool smtpc_host_ok(const char *host);

/* ------------------------------------------------------------------------ */
/* Jobs                                                                     */
/* ------------------------------------------------------------------------ */

/* smtpc_job_free - release a job; returns NULL. */
static struct smtpc_job *smtpc_job_free(struct smtpc_job *job)
{
    if (job != NULL) {
        free(job->res);
        free(job->rstate);
        free(job);
    }
    return NULL;
}

/* smtpc_group_get - group key of p, made when missing, held once more; NULL: no memory. */
static struct smtpc_group *smtpc_group_get(struct smtpc_pool *p, const char *key)
{
    struct smtpc_group *g = p->groups;
    while (g != NULL && strcmp(g->key, key) != 0)
        g = g->next;
    if (g == NULL) {
        size_t n = strlen(key) + 1;
        g = calloc(1, sizeof(*g) + n);
        if (g == NULL)
            return NULL;
        memcpy(g->key, key, n); /* per_conn and hold_ms: from each delivery queued */
        g->next = p->groups;
        p->groups = g;
    }
    g->refs++;
    return g;
}

/* smtpc_group_put - let go of g (NULL: none), freed with its last holder. */
static void smtpc_group_put(struct smtpc_pool *p, struct smtpc_group *g)
{
    if (g == NULL || --g->refs > 0)
        return;
    struct smtpc_group **pp = &p->groups;
    while (*pp != g)
        pp = &(*pp)->next;
    *pp = g->next;
    free(g);
}

/* smtpc_group_jobs - g's n_jobs changed: note it for the cap's look back. */
static void smtpc_group_jobs(struct smtpc_pool *p, struct smtpc_group *g)
{
    if (g->hold_ms > 0)
        peak_set(&g->jobs, g->n_jobs, uv_now(p->loop), g->hold_ms);
}

/*
 * smtpc_group_cap - the connections g may have now: ceil(n / per_conn),
 * n its deliveries now, or with hold_ms the most it had lately.
 */
static unsigned smtpc_group_cap(const struct smtpc_pool *p, const struct smtpc_group *g)
{
    if (g == NULL || g->per_conn == 0)
        return UINT_MAX;
    unsigned n = g->hold_ms > 0 ? peak_get(&g->jobs, uv_now(p->loop), g->hold_ms) : g->n_jobs;
    return n / g->per_conn + (n % g->per_conn != 0);
}

/* smtpc_group_over - has c's group more live connections than its cap allows now? */
static bool smtpc_group_over(const struct smtpc_conn *c)
{
    const struct smtpc_group *g = c->dest != NULL ? c->dest->group : NULL;
    return g != NULL && g->n_conns - g->n_quitting > smtpc_group_cap(c->pool, g);
}

/* smtpc_group_waits - has a destination of g (NULL: none) a delivery queued? */
static bool smtpc_group_waits(const struct smtpc_pool *p, const struct smtpc_group *g)
{
    if (g == NULL || g->per_conn == 0)
        return false;
    for (const struct smtpc_dest *d = p->dests; d != NULL; d = d->next)
        if (d->group == g && d->q_head != NULL)
            return true;
    return false;
}

/* smtpc_job_withdrawn - does job's source no longer want it (smtpc_source.withdrawn)? */
static bool smtpc_job_withdrawn(const struct smtpc_job *job)
{
    const struct smtpc_source *src = job->msg->source;
    return src != NULL && src->withdrawn != NULL && src->withdrawn(src->data);
}

/* smtpc_job_decide - fix the result of recipient i. */
static void smtpc_job_decide(struct smtpc_job *job,
                             size_t i,
                             enum smtpc_status st,
                             unsigned code,
                             const char *text)
{
    job->res[i].status = st;
    job->res[i].code = code;
    hamr_strlcpy(job->res[i].text, text, sizeof(job->res[i].text));
    job->rstate[i] = SMTPC_RCPT_DONE;
}

/* smtpc_job_decide_rest - fix the result of every recipient not yet decided. */
static void smtpc_job_decide_rest(struct smtpc_job *job,
                                  enum smtpc_status st,
                                  unsigned code,
                                  const char *text)
{
    for (size_t i = 0; i < job->msg->n_rcpts; i++)
        if (job->rstate[i] != SMTPC_RCPT_DONE)
            smtpc_job_decide(job, i, st, code, text);
}

/*
 * smtpc_job_finish - log the attempt, run the callback once, free the job.
 * c: the connection the job used last (borrowed; it may be CLOSING, its
 * memory lasts until its close callbacks), or NULL when there was none.
 */
static void smtpc_job_finish(struct smtpc_job *job, const struct smtpc_conn *c)
{
    struct smtpc_pool *p = job->pool;
    const char *remote = c != NULL ? c->remote : "";
    const char *host = c != NULL ? c->host : "";
    const char *tls = c != NULL ? c->tls_desc : "none";
    unsigned n_tried = job->n_tried;
    size_t n = job->msg->n_rcpts;
    size_t count[3] = {0, 0, 0};
    const struct smtpc_rcpt_result *shown = &job->res[0];
    bool have_failure = false;

    /* Anything still open here is a bug in the state machine; never report it OK. */
    smtpc_job_decide_rest(job, SMTPC_TEMP, 0, "transaction ended without a result");
    for (size_t i = 0; i < n; i++) {
        count[job->res[i].status]++;
        if (job->res[i].status != SMTPC_OK && !have_failure) {
            shown = &job->res[i];
            have_failure = true;
        }
    }
    const char *status = count[SMTPC_OK] == n     ? "ok"
                         : count[SMTPC_TEMP] == n ? "temp"
                         : count[SMTPC_PERM] == n ? "perm"
                                                  : "mixed";
    char text[sizeof(shown->text)];
    log_info(
        "delivery to=%zu relay=%s host=%s tried=%u status=%s ok=%zu temp=%zu perm=%zu code=%u "
        "tls=\"%s\" text=\"%s\"",
        n, remote[0] ? remote : "none", host[0] ? host : "none", n_tried, status, count[SMTPC_OK],
        count[SMTPC_TEMP], count[SMTPC_PERM], shown->code, tls,
        log_printable(text, sizeof(text), shown->text, strlen(shown->text)));

    struct smtpc_result res = {
        .n_rcpts = n,
        .rcpts = job->res,
        .n_tried = n_tried,
        .tls_state = c != NULL ? c->tls_state : SMTPC_TLS_STATE_NO_CONNECTION,
    };
    hamr_strlcpy(res.remote, remote, sizeof(res.remote));
    hamr_strlcpy(res.host, host, sizeof(res.host));
    hamr_strlcpy(res.tls, tls, sizeof(res.tls));
    HAMR_ASSERT(p->n_active > 0);
    p->n_active--;
    if (job->group != NULL) {
        job->group->n_jobs--;
        smtpc_group_jobs(p, job->group);
        smtpc_group_put(p, job->group);
        job->group = NULL;
    }
    job->cb(job->arg, &res);
    smtpc_job_free(job);
}

/* ------------------------------------------------------------------------ */
/* Connection plumbing: states, writes, failure                             */
/* ------------------------------------------------------------------------ */

/* smtpc_conn_timeout_ms - the deadline for a state (Postfix xfer_timeouts). */
static uint64_t smtpc_conn_timeout_ms(const struct smtpc_conn *c, enum smtpc_state s)
{
    const struct smtpc_config *cfg = &c->pool->cfg;
    switch (s) {
        case SMTPC_STATE_CONNECTING:
        case SMTPC_STATE_GREETING:
            return cfg->connect_timeout_ms;
        case SMTPC_STATE_READY:
            /* A group's idle connection looks at its cap every hold_ms (smtpc_conn_timer_cb). */
            if (c->dest != NULL && c->dest->group != NULL && c->dest->group->per_conn > 0 &&
                c->dest->group->hold_ms > 0 && c->dest->group->hold_ms < cfg->idle_timeout_ms)
                return c->dest->group->hold_ms;
            return cfg->idle_timeout_ms;
        case SMTPC_STATE_DOT:
            return cfg->data_done_timeout_ms;
        default:
            return cfg->command_timeout_ms;
    }
}

static void smtpc_conn_timer_cb(uv_timer_t *t);

/* smtpc_conn_enter_state - the one place where a connection changes state. */
static void smtpc_conn_enter_state(struct smtpc_conn *c, enum smtpc_state s)
{
    log_debug("smtpc conn=%llu relay=%s state %s -> %s", c->id, c->remote[0] ? c->remote : "none",
              smtpc_state_names[c->state], smtpc_state_names[s]);
    enum smtpc_state old = c->state;
    c->state = s;
    if (s == SMTPC_STATE_CLOSING)
        return;
    /* Connect and greeting share one deadline (connect_timeout_ms). */
    if (s == SMTPC_STATE_GREETING && old == SMTPC_STATE_CONNECTING)
        return;
    uv_timer_start(&c->timer, smtpc_conn_timer_cb, smtpc_conn_timeout_ms(c, s), 0);
}

static bool smtpc_conn_may_move_on(const struct smtpc_conn *c);
static void smtpc_conn_move_on(struct smtpc_conn *c,
                               struct smtpc_job *job,
                               unsigned code,
                               const char *text);

/*
 * smtpc_conn_end - the connection is done for (status st, code and text for
 * every open recipient of its job): move the job on to the next address
 * when that is allowed (smtpc_conn_may_move_on), else discard the
 * connection and then finish the job, so that the callback may do
 * anything, smtpc_pool_close included.
 */
static void smtpc_conn_end(struct smtpc_conn *c,
                           enum smtpc_status st,
                           unsigned code,
                           const char *text)
{
    if (c->state == SMTPC_STATE_CLOSING)
        return;
    struct smtpc_job *job = c->job;
    if (job != NULL && st == SMTPC_TEMP && smtpc_conn_may_move_on(c)) {
        c->job = NULL;
        smtpc_conn_move_on(c, job, code, text);
        return;
    }
    c->job = NULL;
    if (c->src_pending) {
        /* The chunk asked for must not come to a connection that is gone. */
        const struct smtpc_source *src = job->msg->source;
        c->src_pending = false;
        src->cancel(src->data);
    }
    if (job == NULL) {
        char pr[sizeof(((struct smtpc_rcpt_result *)0)->text)];
        log_info("smtpc conn=%llu relay=%s closed in state %s: %s", c->id,
                 c->remote[0] ? c->remote : "none", smtpc_state_names[c->state],
                 log_printable(pr, sizeof(pr), text, strlen(text)));
    }
    smtpc_conn_close(c);
    if (job != NULL) {
        smtpc_job_decide_rest(job, st, code, text);
        smtpc_job_finish(job, c); /* c stays readable until its close callbacks */
    }
}

/* smtpc_conn_fail - the attempt failed without a usable reply, or with one that ends it: TEMP. */
static void smtpc_conn_fail(struct smtpc_conn *c, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void smtpc_conn_fail(struct smtpc_conn *c, unsigned code, const char *fmt, ...)
{
    if (c->state == SMTPC_STATE_CLOSING)
        return;
    char text[sizeof(((struct smtpc_rcpt_result *)0)->text)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    smtpc_conn_end(c, SMTPC_TEMP, code, text);
}

static void smtpc_conn_body_written(struct smtpc_conn *c);

/* smtpc_conn_cmd_write_cb - a write is done; errors end the attempt. */
static void smtpc_conn_cmd_write_cb(uv_write_t *req, int status)
{
    struct smtpc_cmd_write_req *w = hamr_container_of(req, struct smtpc_cmd_write_req, req);
    struct smtpc_conn *c = w->conn;
    bool body = w->body;
    if (!body)
        OPENSSL_cleanse(w->data, w->len); /* a command may carry credentials (AUTH) */
    free(w);
    if (status == UV_ECANCELED || c->state == SMTPC_STATE_CLOSING)
        return;
    if (status < 0) {
        smtpc_conn_fail(c, 0, "write to %s: %s", c->remote, uv_strerror(status));
        return;
    }
    if (body)
        smtpc_conn_body_written(c);
}

/*
 * smtpc_conn_write_raw - put len octets (copied) on the wire as they are.
 * On failure the attempt is failed here and a negative code is returned: the
 * caller must return at once.
 */
static int smtpc_conn_write_raw(struct smtpc_conn *c, const void *data, size_t len, bool body)
{
    struct smtpc_cmd_write_req *w = malloc(sizeof(*w) + len);
    if (w == NULL) {
        smtpc_conn_fail(c, 0, "out of memory");
        return HAMR_ENOMEM;
    }
    w->conn = c;
    w->len = len;
    w->body = body;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rv = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, smtpc_conn_cmd_write_cb);
    if (rv != 0) {
        free(w);
        smtpc_conn_fail(c, 0, "write to %s: %s", c->remote, uv_strerror(rv));
        return HAMR_EIO;
    }
    return 0;
}

/* smtpc_policy_dane - policy looks up TLSA records (DANE or DANE_ONLY). */
static bool smtpc_policy_dane(enum smtpc_tls_policy policy)
{
    return policy == SMTPC_TLS_DANE || policy == SMTPC_TLS_DANE_ONLY;
}

/* smtpc_conn_target - the target c connects (or connected) to; NULL before the route. */
static const struct smtpc_target *smtpc_conn_target(const struct smtpc_conn *c)
{
    if (c->att.targets == NULL || c->att.next == 0)
        return NULL;
    return &c->att.targets[c->att.next - 1];
}

/*
 * smtpc_conn_dane - DANE applies to c's target: TLS is mandatory. Its
 * certificate must match a TLSA record when it has usable ones
 * (smtpc_conn_dane_auth); with validated records of which none is usable
 * TLS is mandatory but unauthenticated (RFC 7672 2.2; Postfix: encrypt).
 */
static bool smtpc_conn_dane(const struct smtpc_conn *c)
{
    const struct smtpc_target *t = smtpc_conn_target(c);
    return c->dest != NULL && smtpc_policy_dane(c->dest->policy) && t != NULL && t->dane;
}

/* smtpc_conn_dane_auth - DANE applies to c's target and it has usable TLSA records. */
static bool smtpc_conn_dane_auth(const struct smtpc_conn *c)
{
    return smtpc_conn_dane(c) && smtpc_conn_target(c)->n_tlsa > 0;
}

/*
 * smtpc_conn_verify - c's certificate must chain to a trusted CA and name
 * the host: policy VERIFY; or DANE with MTA-STS patterns (enforce) for a
 * target DANE does not cover: DANE first where TLSA records are, then
 * MTA-STS (RFC 8461 2), rather than the opportunistic TLS of plain DANE;
 * or REQUIRETLS under any policy, for a target DANE does not authenticate.
 */
static bool smtpc_conn_verify(const struct smtpc_conn *c)
{
    if (c->dest == NULL)
        return false;
    if (c->dest->policy == SMTPC_TLS_VERIFY)
        return true;
    /* RFC 8689 4.2.1: PKIX, where no usable TLSA record authenticates the host instead. */
    if (c->dest->requiretls)
        return !smtpc_conn_dane_auth(c);
    return smtpc_policy_dane(c->dest->policy) && c->dest->n_patterns > 0 && !smtpc_conn_dane(c);
}

/*
 * smtpc_conn_tls_required - no plaintext on c: the policy demands TLS
 * (ENCRYPT, VERIFY), its messages demand it (REQUIRETLS), or DANE applies
 * to its target.
 */
static bool smtpc_conn_tls_required(const struct smtpc_conn *c)
{
    if (c->dest == NULL)
        return false;
    if (c->dest->policy == SMTPC_TLS_ENCRYPT || c->dest->policy == SMTPC_TLS_VERIFY ||
        c->dest->requiretls)
        return true;
    return smtpc_conn_dane(c) || smtpc_conn_verify(c);
}

/*
 * smtpc_conn_tls_fail - STARTTLS or TLS failed: defer the attempt, discard
 * the connection. Under MAY, Postfix would retry this delivery in plaintext
 * at once; hamr defers instead, which is simpler and never sends in the
 * clear what a half-working TLS session was meant to carry.
 */
static void smtpc_conn_tls_fail(struct smtpc_conn *c, unsigned code, const char *why)
{
    bool dane = smtpc_conn_dane(c);
    c->tls_state = dane ? SMTPC_TLS_STATE_DANE_FAILED : SMTPC_TLS_STATE_HANDSHAKE_FAILED;
    c->pool->stats.dane_failed += dane;
    if (dane)
        smtpc_conn_fail(c, code, "4.7.5 DANE: TLS required but failed with %s: %s", c->remote, why);
    else if (smtpc_conn_tls_required(c))
        smtpc_conn_fail(c, code, "TLS required but failed with %s: %s", c->remote, why);
    else
        smtpc_conn_fail(c, code, "TLS handshake failed with %s: %s", c->remote, why);
}

/*
 * smtpc_conn_requiretls_fail - c cannot carry mail under REQUIRETLS (RFC
 * 8689 4.2.1): an MX lookup nothing protected (before any connection), no
 * STARTTLS, or a handshake or certificate check that failed. The message
 * must not go there, and every open recipient fails for good with 5.7.30
 * (why: fmt and its arguments); the connection is discarded. RFC 8689
 * lets the client try other MX hosts first; hamr does not: moving on is
 * done only before EHLO is accepted and TLS begun (smtpc_conn_may_move_on),
 * and the MX hosts of one domain nearly always share their TLS setup.
 */
static void smtpc_conn_requiretls_fail(struct smtpc_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void smtpc_conn_requiretls_fail(struct smtpc_conn *c, const char *fmt, ...)
{
    static const char prefix[] = "5.7.30 REQUIRETLS support required, but ";
    char text[sizeof(((struct smtpc_rcpt_result *)0)->text)];
    size_t n = hamr_strlcpy(text, prefix, sizeof(text));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof(text) - n, fmt, ap);
    va_end(ap);
    smtpc_conn_end(c, SMTPC_PERM, 0, text);
}

/*
 * smtpc_conn_tls_rejected - the handshake failed, or the certificate did
 * not pass its check (why): for REQUIRETLS mail the host is unfit
 * (smtpc_conn_requiretls_fail), for any other a TLS failure that defers
 * (smtpc_conn_tls_fail).
 */
static void smtpc_conn_tls_rejected(struct smtpc_conn *c, const char *why)
{
    if (!c->dest->requiretls) {
        smtpc_conn_tls_fail(c, 0, why);
        return;
    }
    bool dane = smtpc_conn_dane(c);
    c->tls_state = dane ? SMTPC_TLS_STATE_DANE_FAILED : SMTPC_TLS_STATE_HANDSHAKE_FAILED;
    c->pool->stats.dane_failed += dane;
    smtpc_conn_requiretls_fail(c, "TLS failed with host %s[%s]: %s", c->host, c->ip, why);
}

/*
 * smtpc_conn_tls_flush - write the ciphertext the TLS engine holds; body
 * marks the write that completes a body chunk. 0 or a negative code after
 * the attempt was failed.
 */
static int smtpc_conn_tls_flush(struct smtpc_conn *c, bool body)
{
    const char *out = NULL;
    size_t n = tls_output(c->tls, &out);
    if (n == 0) {
        HAMR_ASSERT(!body); /* a chunk is never empty, so it always makes ciphertext */
        return 0;
    }
    int rv = smtpc_conn_write_raw(c, out, n, body);
    if (c->tls != NULL)
        tls_output_done(c->tls, n);
    return rv;
}

/* smtpc_conn_write - plaintext for the server: through TLS once it is up. */
static int smtpc_conn_write(struct smtpc_conn *c, const void *data, size_t len, bool body)
{
    if (!c->tls_up)
        return smtpc_conn_write_raw(c, data, len, body);
    if (tls_write(c->tls, data, len) != 0) {
        smtpc_conn_tls_fail(c, 0, tls_error(c->tls));
        return HAMR_EPROTO;
    }
    return smtpc_conn_tls_flush(c, body);
}

/*
 * smtpc_conn_send - write len bytes (copied) and owe n_replies replies.
 * On failure the attempt is failed here and a negative code is returned: the
 * caller must return at once.
 */
static int smtpc_conn_send(struct smtpc_conn *c, const void *data, size_t len, unsigned n_replies)
{
    int rv = smtpc_conn_write(c, data, len, false);
    if (rv != 0)
        return rv;
    c->n_expected += n_replies;
    return 0;
}

/* smtpc_cmd_append - format one command line into b. */
static int smtpc_cmd_append(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int smtpc_cmd_append(struct buf *b, const char *fmt, ...)
{
    char line[SMTPC_CMD_LINE_MAX + SMTPC_ADDR_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(line)); /* addresses were checked */
    return buf_append(b, line, (size_t)n);
}

/* smtpc_conn_send_line - format and write one command that owes one reply. */
static int smtpc_conn_send_line(struct smtpc_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int smtpc_conn_send_line(struct smtpc_conn *c, const char *fmt, ...)
{
    char line[SMTPC_CMD_LINE_MAX + SMTPC_ADDR_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(line));
    return smtpc_conn_send(c, line, (size_t)n, 1);
}

/* smtpc_conn_quit - say QUIT; the connection closes on the reply, EOF or timeout. */
static void smtpc_conn_quit(struct smtpc_conn *c)
{
    if (smtpc_conn_send(c, "QUIT\r\n", 6, 1) != 0)
        return;
    smtpc_conn_enter_state(c, SMTPC_STATE_QUIT);
    if (c->dest != NULL && c->dest->group != NULL) {
        c->dest->group->n_quitting++;
        c->group_quit = true;
    }
}

/* smtpc_status_of - the result a reply code means for a recipient. */
static enum smtpc_status smtpc_status_of(unsigned code)
{
    if (code >= 200 && code < 300)
        return SMTPC_OK;
    return code >= 500 ? SMTPC_PERM : SMTPC_TEMP;
}

/* ------------------------------------------------------------------------ */
/* Connecting                                                               */
/* ------------------------------------------------------------------------ */

static void smtpc_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void smtpc_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* smtpc_conn_connect_cb - TCP is up: read the greeting. */
static void smtpc_conn_connect_cb(uv_connect_t *req, int status)
{
    struct smtpc_conn *c = req->data;
    if (status == UV_ECANCELED || c->state == SMTPC_STATE_CLOSING)
        return;
    if (status < 0) {
        smtpc_conn_fail(c, 0, "connect to %s: %s", c->remote, uv_strerror(status));
        return;
    }
    int rv = uv_read_start((uv_stream_t *)&c->tcp, smtpc_conn_alloc_cb, smtpc_conn_read_cb);
    if (rv != 0) {
        smtpc_conn_fail(c, 0, "read from %s: %s", c->remote, uv_strerror(rv));
        return;
    }
    c->n_expected = 1; /* the greeting */
    smtpc_conn_enter_state(c, SMTPC_STATE_GREETING);
}

/* smtpc_conn_connect - connect to a target's address (sa, with its port). */
static void smtpc_conn_connect(struct smtpc_conn *c, const struct sockaddr *sa)
{
    hamr_strlcpy(c->ip, "?", sizeof(c->ip));
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(s6, c->ip, sizeof(c->ip));
        c->rport = ntohs(s6->sin6_port);
        snprintf(c->remote, sizeof(c->remote), "[%s]:%u", c->ip, (unsigned)c->rport);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        uv_ip4_name(s4, c->ip, sizeof(c->ip));
        c->rport = ntohs(s4->sin_port);
        snprintf(c->remote, sizeof(c->remote), "%s:%u", c->ip, (unsigned)c->rport);
    }
    c->connect_req.data = c;
    int rv = uv_tcp_connect(&c->connect_req, &c->tcp, sa, smtpc_conn_connect_cb);
    if (rv != 0)
        smtpc_conn_fail(c, 0, "connect to %s: %s", c->remote, uv_strerror(rv));
    /* Asynchronous processing continues in smtpc_conn_connect_cb. */
}

/* smtpc_conn_connect_next - connect to the attempt's next target (there is one). */
static void smtpc_conn_connect_next(struct smtpc_conn *c)
{
    HAMR_ASSERT(c->att.next < c->att.n);
    const struct smtpc_target *t = &c->att.targets[c->att.next++];
    c->job->n_tried = (unsigned)c->att.next;
    hamr_strlcpy(c->host, t->host, sizeof(c->host));
    smtpc_conn_connect(c, (const struct sockaddr *)&t->addr);
}

/* smtpc_host_strip - the next hop without the brackets of "[...]" (nor "IPv6:" inside them). */
static void smtpc_host_strip(const char *host, char *out, size_t size)
{
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
        /* RFC 5321 4.1.3: an IPv6 address literal is "[IPv6:2001:db8::1]". */
        if (n > 5 && hamr_strncaseeq(host, "IPv6:", 5)) {
            host += 5;
            n -= 5;
        }
    }
    if (n >= size)
        n = size - 1;
    memcpy(out, host, n);
    out[n] = '\0';
}

/* smtpc_target_literal - t for the IP literal s (no brackets) and port; false if s is a name. */
static bool smtpc_target_literal(struct smtpc_target *t, const char *s, uint16_t port)
{
    struct sockaddr_in s4;
    struct sockaddr_in6 s6;
    memset(t, 0, sizeof(*t));
    if (uv_ip4_addr(s, port, &s4) == 0)
        memcpy(&t->addr, &s4, sizeof(s4));
    else if (strchr(s, ':') != NULL && uv_ip6_addr(s, port, &s6) == 0)
        memcpy(&t->addr, &s6, sizeof(s6));
    else
        return false;
    hamr_strlcpy(t->host, s, sizeof(t->host));
    return true;
}

/*
 * smtpc_conn_route - the next hop is resolved (route borrowed): a TEMP or
 * PERM route decides every recipient and discards the connection; an OK
 * one gives the attempt its targets (address_limit at most, copied) and the
 * connection connects to the first.
 */
static void smtpc_conn_route(struct smtpc_conn *c, const struct smtpc_route *route)
{
    char name[SMTPC_HOST_MAX + 1];
    smtpc_host_strip(c->dest->host, name, sizeof(name));
    if (route->status != SMTPC_OK) {
        if (route->dane_unusable && route->status == SMTPC_TEMP) {
            c->tls_state = SMTPC_TLS_STATE_DANE_UNUSABLE;
            c->pool->stats.dane_unusable++;
        }
        char text[sizeof(route->text) + 1];
        snprintf(text, sizeof(text), "%.*s", (int)sizeof(route->text), route->text);
        smtpc_conn_end(c, route->status == SMTPC_PERM ? SMTPC_PERM : SMTPC_TEMP, route->code, text);
        return;
    }
    /*
     * RFC 8689 4.2.1: REQUIRETLS mail only to MX hosts that DNSSEC or an
     * MTA-STS policy in enforce mode (the patterns the route kept to)
     * vouch for. A route with MTA-STS patterns had its hosts filtered.
     * Mail without REQUIRETLS has other destinations: it is not held up.
     */
    if (c->dest->requiretls && !route->mx_secure && c->dest->n_patterns == 0) {
        smtpc_conn_requiretls_fail(c,
                                   "the MX records of %s are not DNSSEC-validated and no MTA-STS "
                                   "policy covers them",
                                   name);
        return;
    }
    size_t avail = route->targets != NULL ? route->n : 0;
    size_t max = c->pool->cfg.address_limit;
    if (avail < max)
        max = avail;
    struct smtpc_target *t = max > 0 ? calloc(max, sizeof(*t)) : NULL;
    if (max > 0 && t == NULL) {
        smtpc_conn_fail(c, 0, "out of memory");
        return;
    }
    size_t n = 0;
    bool dane_only = c->dest->policy == SMTPC_TLS_DANE_ONLY;
    for (size_t i = 0; i < avail && n < max; i++) {
        const struct smtpc_target *rt = &route->targets[i];
        if (rt->addr.ss_family != AF_INET && rt->addr.ss_family != AF_INET6)
            continue;
        if (dane_only && (!rt->dane || rt->n_tlsa == 0))
            continue; /* RFC 7672 has no such policy; Postfix's dane-only */
        t[n] = *rt;
        t[n].host[SMTPC_HOST_MAX] = '\0';
        /* The host goes into logs and SNI: the next hop's own name if it is unfit. */
        if (!smtpc_host_ok(t[n].host))
            hamr_strlcpy(t[n].host, name, sizeof(t[n].host));
        n++;
    }
    if (n == 0 && dane_only && avail > 0) {
        free(t);
        c->tls_state = SMTPC_TLS_STATE_DANE_UNUSABLE;
        c->pool->stats.dane_unusable++;
        smtpc_conn_end(c, SMTPC_TEMP, 450,
                       "4.7.5 TLS policy dane-only: no MX host of the next hop has usable "
                       "DNSSEC-validated TLSA records");
        return;
    }
    if (n == 0) {
        free(t);
        smtpc_conn_fail(c, 0, "resolve %s: no address", name);
        return;
    }
    c->att.targets = t;
    c->att.n = n;
    smtpc_conn_connect_next(c);
}

/* smtpc_conn_route_cb - the config's resolver answered (never after its cancel). */
static void smtpc_conn_route_cb(void *arg, const struct smtpc_route *route)
{
    struct smtpc_conn *c = arg;
    HAMR_ASSERT(c->rsv_pending && c->state == SMTPC_STATE_CONNECTING);
    c->rsv_pending = false;
    c->rsv_handle = NULL;
    smtpc_conn_route(c, route);
}

/* smtpc_conn_resolve_cb - uv_getaddrinfo answered: each address it gave is a target, in order. */
static void smtpc_conn_resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct smtpc_conn *c = req->data;
    c->gai_pending = false;
    if (c->state == SMTPC_STATE_CLOSING) {
        uv_freeaddrinfo(res);
        smtpc_conn_close(c); /* frees c if its handles are closed already */
        return;
    }
    char name[SMTPC_HOST_MAX + 1];
    smtpc_host_strip(c->dest->host, name, sizeof(name));
    size_t max = 0;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        max++;
    if (max > c->pool->cfg.address_limit)
        max = c->pool->cfg.address_limit;
    struct smtpc_target *t = status == 0 && max > 0 ? calloc(max, sizeof(*t)) : NULL;
    size_t n = 0;
    for (const struct addrinfo *ai = res; t != NULL && ai != NULL && n < max; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(t[n].addr))
            continue;
        hamr_strlcpy(t[n].host, name, sizeof(t[n].host));
        memcpy(&t[n].addr, ai->ai_addr, ai->ai_addrlen);
        n++;
    }
    uv_freeaddrinfo(res);
    if (status < 0 || (max > 0 && t == NULL)) {
        char pr[SMTPC_HOST_MAX + 1];
        smtpc_conn_fail(c, 0, "resolve %s: %s", log_printable(pr, sizeof(pr), name, strlen(name)),
                        status < 0 ? uv_strerror(status) : "out of memory");
        return;
    }
    /* No MX lookup: the operator named this host. */
    struct smtpc_route route = {.status = SMTPC_OK, .n = n, .targets = t, .mx_secure = true};
    smtpc_conn_route(c, &route);
    free(t);
}

/*
 * smtpc_conn_resolve - the next hop to targets: through the config's
 * resolver; without one, an IP literal (bare or in brackets) is its own
 * target and a name (brackets stripped) goes to uv_getaddrinfo.
 */
static void smtpc_conn_resolve(struct smtpc_conn *c)
{
    struct smtpc_dest *d = c->dest;
    const struct smtpc_resolver *rsv = c->pool->cfg.resolver;
    char name[SMTPC_HOST_MAX + 1];
    char pr[SMTPC_HOST_MAX + 1];
    if (rsv != NULL) {
        struct smtpc_resolve_opts opts = {.dane = smtpc_policy_dane(d->policy),
                                          .mx_patterns = d->pattern_v,
                                          .n_mx_patterns = d->n_patterns};
        int rv = rsv->resolve(rsv->data, d->host, d->port, &opts, smtpc_conn_route_cb, c,
                              &c->rsv_handle);
        if (rv != 0) {
            smtpc_conn_fail(c, 0, "resolve %s: %s",
                            log_printable(pr, sizeof(pr), d->host, strlen(d->host)),
                            hamr_strerror(rv));
            return;
        }
        c->rsv_pending = true;
        /* Asynchronous processing continues in smtpc_conn_route_cb. */
        return;
    }
    smtpc_host_strip(d->host, name, sizeof(name));
    struct smtpc_target literal;
    if (smtpc_target_literal(&literal, name, d->port)) {
        struct smtpc_route route = {
            .status = SMTPC_OK, .n = 1, .targets = &literal, .mx_secure = true};
        smtpc_conn_route(c, &route);
        return;
    }
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)d->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    c->gai.data = c;
    int rv = uv_getaddrinfo(c->pool->loop, &c->gai, smtpc_conn_resolve_cb, name, port, &hints);
    if (rv != 0) {
        smtpc_conn_fail(c, 0, "resolve %s: %s", log_printable(pr, sizeof(pr), name, strlen(name)),
                        uv_strerror(rv));
        return;
    }
    c->gai_pending = true;
    /* Asynchronous processing continues in smtpc_conn_resolve_cb. */
}

/*
 * smtpc_conn_alloc - a connection to d for job (which it takes over),
 * joined to d, its connect deadline running. NULL, with the job left to
 * the caller and *why set, when there is no memory or no socket.
 */
static struct smtpc_conn *smtpc_conn_alloc(struct smtpc_dest *d,
                                           struct smtpc_job *job,
                                           const char **why)
{
    struct smtpc_pool *p = d->pool;
    struct smtpc_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        *why = "out of memory";
        return NULL;
    }
    int rv = uv_tcp_init(p->loop, &c->tcp);
    if (rv != 0) {
        free(c);
        *why = "out of sockets";
        return NULL;
    }
    uv_timer_init(p->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->pool = p;
    c->dest = d;
    c->id = ++p->next_id;
    c->job = job;
    c->state = SMTPC_STATE_CONNECTING;
    hamr_strlcpy(c->tls_desc, "none", sizeof(c->tls_desc));
    /* Resolve or connect failures, or anything else before EHLO is answered. */
    c->tls_state = SMTPC_TLS_STATE_NO_CONNECTION;
    smtpc_reply_init(&c->parser);
    /* smtpc_dest_dispatch checks the limit; smtpc_conn_move_on closes the old one first. */
    HAMR_ASSERT(d->n_conns < p->cfg.max_conns_per_dest);
    c->next = d->conns;
    d->conns = c;
    d->n_conns++;
    if (d->group != NULL)
        d->group->n_conns++;
    p->stats.connections++;
    p->n_alive++;
    log_debug("smtpc conn=%llu new, state CONNECTING", c->id);
    uv_timer_start(&c->timer, smtpc_conn_timer_cb, p->cfg.connect_timeout_ms, 0);
    return c;
}

/* smtpc_conn_new - open a connection to d for job (which it takes over): resolve, connect. */
static void smtpc_conn_new(struct smtpc_dest *d, struct smtpc_job *job)
{
    const char *why = NULL;
    struct smtpc_conn *c = smtpc_conn_alloc(d, job, &why);
    if (c == NULL) {
        smtpc_job_decide_rest(job, SMTPC_TEMP, 0, why);
        smtpc_job_finish(job, NULL);
        return;
    }
    smtpc_conn_resolve(c);
}

/*
 * smtpc_conn_may_move_on - may c's job go on to the next target? Only while
 * no EHLO or HELO was accepted and no TLS begun, while there is a next
 * target, fewer than address_limit were tried and fewer than session_limit
 * greetings were read (Postfix smtp_mx_address_limit and
 * smtp_mx_session_limit), and never once the pool is closing.
 */
static bool smtpc_conn_may_move_on(const struct smtpc_conn *c)
{
    const struct smtpc_config *cfg = &c->pool->cfg;
    if (c->pool->closing || c->tls != NULL || c->att.targets == NULL)
        return false;
    if (c->state != SMTPC_STATE_CONNECTING && c->state != SMTPC_STATE_GREETING &&
        c->state != SMTPC_STATE_EHLO && c->state != SMTPC_STATE_HELO)
        return false;
    return c->att.next < c->att.n && c->att.next < cfg->address_limit &&
           c->att.n_sessions < cfg->session_limit;
}

/*
 * smtpc_conn_move_on - c failed before EHLO was accepted (code, text):
 * discard it and open a fresh connection (a libuv TCP handle connects only
 * once) to the next target, which takes over job and the attempt. c leaves
 * its destination before the new one joins, so n_conns never goes over
 * max_conns_per_dest. Without memory or a socket the job fails with text,
 * as it would have with no next target.
 */
static void smtpc_conn_move_on(struct smtpc_conn *c,
                               struct smtpc_job *job,
                               unsigned code,
                               const char *text)
{
    struct smtpc_dest *d = c->dest;
    char pr[sizeof(((struct smtpc_rcpt_result *)0)->text)];
    log_info("smtpc conn=%llu relay=%s[%s]:%u failed (%s), trying next address", c->id, c->host,
             c->ip, (unsigned)c->rport, log_printable(pr, sizeof(pr), text, strlen(text)));
    struct smtpc_attempt att = c->att;
    c->att.targets = NULL; /* the next connection owns them; c keeps its counts for results */
    smtpc_conn_close(c);
    const char *why = NULL;
    struct smtpc_conn *n = smtpc_conn_alloc(d, job, &why);
    if (n == NULL) {
        free(att.targets);
        smtpc_job_decide_rest(job, SMTPC_TEMP, code, text);
        smtpc_job_finish(job, c); /* c stays readable until its close callbacks */
        return;
    }
    n->att = att;
    smtpc_conn_connect_next(n);
}

/* ------------------------------------------------------------------------ */
/* Transactions                                                             */
/* ------------------------------------------------------------------------ */

/* smtpc_buf_puts - append the string str to b. */
static int smtpc_buf_puts(struct buf *b, const char *str)
{
    return buf_append(b, str, strlen(str));
}

/*
 * smtpc_conn_mail_dsn_append - RET= and ENVID= (RFC 3461 4.3, 4.4) for m
 * onto the MAIL command in b, for a next hop that offers DSN. An ENVID too
 * long to be one is left out rather than sent cut.
 */
static int smtpc_conn_mail_dsn_append(const struct smtpc_msg *m, struct buf *b)
{
    int rv = 0;
    if (m->ret == SMTP_RET_FULL)
        rv = smtpc_buf_puts(b, " RET=FULL");
    else if (m->ret == SMTP_RET_HDRS)
        rv = smtpc_buf_puts(b, " RET=HDRS");
    if (rv != 0 || m->envid == NULL || m->envid[0] == '\0')
        return rv;
    char xtext[SMTP_XTEXT_MAX(SMTP_ENVID_MAX) + 1];
    if (!smtp_xtext_encode(m->envid, strlen(m->envid), xtext, sizeof(xtext)))
        return 0;
    rv = smtpc_buf_puts(b, " ENVID=");
    return rv != 0 ? rv : smtpc_buf_puts(b, xtext);
}

/*
 * smtpc_conn_mail_append - the MAIL command for c->job onto b, with the
 * parameters the next hop takes. SMTPUTF8 and REQUIRETLS were checked to
 * be offered (smtpc_conn_tx_check).
 */
static int smtpc_conn_mail_append(const struct smtpc_conn *c, struct buf *b)
{
    const struct smtpc_msg *m = c->job->msg;
    int rv = smtpc_cmd_append(b, "MAIL FROM:<%s>", m->sender);
    if (rv == 0 && (c->ext & SMTPC_EXT_SIZE))
        rv = smtpc_cmd_append(b, " SIZE=%zu", m->body_len);
    /*
     * RFC 6152 says not to send 8-bit data to a server without 8BITMIME, but
     * like Postfix and most MTAs we send it anyway, without BODY=: bouncing
     * would help nobody and nearly every server today passes 8-bit through.
     */
    if (rv == 0 && m->body_8bit && (c->ext & SMTPC_EXT_8BITMIME))
        rv = smtpc_buf_puts(b, " BODY=8BITMIME");
    if (rv == 0 && m->smtputf8) /* RFC 6531 3.4 */
        rv = smtpc_buf_puts(b, " SMTPUTF8");
    if (rv == 0 && m->requiretls) /* RFC 8689 4.1 */
        rv = smtpc_buf_puts(b, " REQUIRETLS");
    if (rv == 0 && (c->ext & SMTPC_EXT_DSN))
        rv = smtpc_conn_mail_dsn_append(m, b);
    return rv != 0 ? rv : buf_append(b, "\r\n", 2);
}

/*
 * smtpc_conn_rcpt_dsn_append - NOTIFY= and ORCPT= (RFC 3461 4.1, 4.2) of
 * one recipient onto its RCPT command in b, for a next hop that offers
 * DSN. An ORCPT of type utf-8 (RFC 6533 3) goes only to a next hop that
 * offers SMTPUTF8 as well; one that cannot be written is left out.
 */
static int smtpc_conn_rcpt_dsn_append(const struct smtpc_conn *c,
                                      const struct smtp_dsn_rcpt *dsn,
                                      struct buf *b)
{
    int rv = 0;
    if (dsn->notify != 0) {
        char notify[64];
        smtp_notify_format(dsn->notify, notify, sizeof(notify));
        rv = smtpc_buf_puts(b, " NOTIFY=");
        rv = rv != 0 ? rv : smtpc_buf_puts(b, notify);
    }
    if (rv != 0 || dsn->orcpt == NULL)
        return rv;
    if (hamr_strncaseeq(dsn->orcpt, "utf-8;", 6)) {
        /* Sent as it is: never a control octet or a space on the command line (S10). */
        const char *a = dsn->orcpt + 6;
        if (!(c->ext & SMTPC_EXT_SMTPUTF8) || !smtp_utf8_valid(a, strlen(a)) ||
            strchr(a, ' ') != NULL)
            return 0;
    }
    char orcpt[SMTP_XTEXT_MAX(SMTP_ORCPT_MAX) + 1];
    if (!smtp_orcpt_format(dsn->orcpt, orcpt, sizeof(orcpt)))
        return 0;
    rv = smtpc_buf_puts(b, " ORCPT=");
    return rv != 0 ? rv : smtpc_buf_puts(b, orcpt);
}

/* smtpc_conn_rcpt_append - the RCPT command for recipient i of c->job onto b. */
static int smtpc_conn_rcpt_append(const struct smtpc_conn *c, struct buf *b, size_t i)
{
    const struct smtpc_msg *m = c->job->msg;
    int rv = smtpc_cmd_append(b, "RCPT TO:<%s>", m->rcpts[i]);
    if (rv == 0 && (c->ext & SMTPC_EXT_DSN) && m->rcpt_dsn != NULL)
        rv = smtpc_conn_rcpt_dsn_append(c, &m->rcpt_dsn[i], b);
    return rv != 0 ? rv : buf_append(b, "\r\n", 2);
}

/* smtpc_conn_send_rcpt - write the RCPT command for recipient i (unpipelined). */
static int smtpc_conn_send_rcpt(struct smtpc_conn *c, size_t i)
{
    struct buf b;
    buf_init(&b, SMTPC_RCPT_LINE_MAX);
    int rv = smtpc_conn_rcpt_append(c, &b, i);
    if (rv != 0) {
        buf_free(&b);
        smtpc_conn_fail(c, 0, "out of memory");
        return rv;
    }
    rv = smtpc_conn_send(c, b.data, b.len, 1);
    buf_free(&b);
    return rv;
}

/*
 * smtpc_conn_tx_refuse - c->job cannot go to this next hop: every
 * recipient gets st, code and text without a word to the server, and the
 * job is finished. Returns 1 for smtpc_conn_start_tx.
 */
static int smtpc_conn_tx_refuse(struct smtpc_conn *c,
                                enum smtpc_status st,
                                unsigned code,
                                const char *text)
{
    struct smtpc_job *job = c->job;
    smtpc_job_decide_rest(job, st, code, text);
    c->job = NULL;
    smtpc_job_finish(job, c);
    return 1;
}

/*
 * smtpc_conn_tx_check - may c->job go to this next hop? 0 if so; 1 when
 * the job was refused (smtpc_conn_tx_refuse), each check in turn:
 *   SIZE: RFC 1870 6, do not send what the server said it will refuse.
 *   REQUIRETLS: RFC 8689 4.2.1, verified TLS (PKIX or DANE) and the
 *     extension offered after STARTTLS, else 5.7.30. The connection
 *     demanded TLS before this (smtpc_conn_after_ehlo); TLS that is up
 *     but not verified is left (DANE records of which none is usable).
 *   SMTPUTF8: RFC 6531 3.4, no downgrade: 5.6.7, Postfix's words. As in
 *     Postfix this fails for good at once, other MX hosts untried: it is
 *     a property of the domain's servers, not of one host.
 * The failures carry no reply code: the text opens with the enhanced
 * status, where the delivery status notice looks for it.
 */
static int smtpc_conn_tx_check(struct smtpc_conn *c)
{
    const struct smtpc_msg *m = c->job->msg;
    char text[sizeof(c->job->res[0].text)];
    if ((c->ext & SMTPC_EXT_SIZE) && c->size_limit > 0 && m->body_len > c->size_limit) {
        snprintf(text, sizeof(text), "message size %zu exceeds size limit %llu of %s", m->body_len,
                 (unsigned long long)c->size_limit, c->remote);
        return smtpc_conn_tx_refuse(c, SMTPC_PERM, 552, text);
    }
    if (m->requiretls) {
        HAMR_ASSERT(c->dest->requiretls);
        const char *why = c->tls_state != SMTPC_TLS_STATE_VERIFIED ? "TLS is not verified with"
                          : !(c->ext & SMTPC_EXT_REQUIRETLS)       ? "was not offered by"
                                                                   : NULL;
        if (why != NULL) {
            snprintf(text, sizeof(text), "5.7.30 REQUIRETLS support required, but %s host %s[%s]",
                     why, c->host, c->ip);
            return smtpc_conn_tx_refuse(c, SMTPC_PERM, 0, text);
        }
    }
    if (m->smtputf8 && !(c->ext & SMTPC_EXT_SMTPUTF8)) {
        snprintf(text, sizeof(text),
                 "5.6.7 SMTPUTF8 is required, but was not offered by host %s[%s]", c->host, c->ip);
        return smtpc_conn_tx_refuse(c, SMTPC_PERM, 0, text);
    }
    return 0;
}

/*
 * smtpc_conn_start_tx - send MAIL (with RCPTs and DATA when pipelining) for
 * c->job. Returns 0 when commands went out (or the connection failed), 1 when
 * the job was finished without sending anything (smtpc_conn_tx_check).
 */
static int smtpc_conn_start_tx(struct smtpc_conn *c)
{
    struct smtpc_job *job = c->job;
    const struct smtpc_msg *m = job->msg;

    if (smtpc_conn_tx_check(c) != 0)
        return 1;

    c->rcpt_idx = 0;
    c->n_accepted = 0;
    c->mail_ok = false;
    c->dot_only = false;
    c->dot_reply = false;
    c->bdat = (c->ext & SMTPC_EXT_CHUNKING) != 0;
    c->bdat_sent = 0;
    c->bdat_answered = 0;
    c->bdat_last = false;
    c->bdat_failed = false;
    c->n_msgs++;

    bool pipelining = (c->ext & SMTPC_EXT_PIPELINING) != 0;
    struct buf b;
    /* Bounded by the address checks in smtpc_pool_deliver and the DSN limits. */
    buf_init(&b, (m->n_rcpts + 2) * SMTPC_RCPT_LINE_MAX);
    int rv = smtpc_conn_mail_append(c, &b);
    unsigned n_replies = 1;
    if (pipelining) {
        /*
         * RFC 2920 3.1: DATA is the last command of the group. BDAT waits
         * for the RCPT replies, so that no body goes out for nobody.
         */
        for (size_t i = 0; rv == 0 && i < m->n_rcpts; i++)
            rv = smtpc_conn_rcpt_append(c, &b, i);
        if (rv == 0 && !c->bdat)
            rv = buf_append(&b, "DATA\r\n", 6);
        n_replies = (unsigned)m->n_rcpts + (c->bdat ? 1 : 2);
    }
    if (rv != 0) {
        buf_free(&b);
        smtpc_conn_fail(c, 0, "out of memory");
        return 0;
    }
    rv = smtpc_conn_send(c, b.data, b.len, n_replies);
    buf_free(&b);
    if (rv != 0)
        return 0;
    smtpc_conn_enter_state(c, SMTPC_STATE_MAIL);
    return 0;
}

/*
 * smtpc_conn_tx_end - the transaction is over: report it, then RSET if the
 * server may still hold transaction state, else go on with the next job.
 */
static void smtpc_conn_tx_end(struct smtpc_conn *c)
{
    HAMR_ASSERT(c->n_expected == 0);
    struct smtpc_job *job = c->job;
    c->job = NULL;
    smtpc_job_finish(job, c);
    if (c->state == SMTPC_STATE_CLOSING)
        return; /* the callback closed the pool */
    if (!c->dot_reply) {
        if (smtpc_conn_send(c, "RSET\r\n", 6, 1) != 0)
            return;
        smtpc_conn_enter_state(c, SMTPC_STATE_RSET);
        return;
    }
    smtpc_conn_next(c);
}

/*
 * smtpc_conn_bdat_timer - the deadline for the next BDAT reply: the one to
 * the LAST chunk gets what the final dot gets (RFC 5321 4.5.3.2.6).
 */
static void smtpc_conn_bdat_timer(struct smtpc_conn *c)
{
    const struct smtpc_config *cfg = &c->pool->cfg;
    uv_timer_start(&c->timer, smtpc_conn_timer_cb,
                   c->bdat_last ? cfg->data_done_timeout_ms : cfg->command_timeout_ms, 0);
}

/*
 * smtpc_conn_bdat_send - "BDAT n" and the n octets of wire form after
 * SMTPC_BDAT_HEAD_MAX in c->chunk (RFC 3030 2), "BDAT n LAST" when they
 * end the body (n may be 0, for an empty body or one that ended with its
 * last chunk), in one write, which saves a copy and a small segment per
 * chunk. Each owes a reply. The LAST write completes nothing: its reply
 * ends the transaction.
 */
static void smtpc_conn_bdat_send(struct smtpc_conn *c, size_t n)
{
    bool last = c->body.done;
    char head[SMTPC_BDAT_HEAD_MAX];
    int hn = snprintf(head, sizeof(head), "BDAT %zu%s\r\n", n, last ? " LAST" : "");
    HAMR_ASSERT(hn > 0 && (size_t)hn < sizeof(head));
    uint8_t *at = c->chunk + SMTPC_BDAT_HEAD_MAX - hn;
    memcpy(at, head, (size_t)hn);
    if (smtpc_conn_write(c, at, (size_t)hn + n, !last) != 0)
        return;
    c->n_expected++;
    c->bdat_sent++;
    if (last) {
        c->bdat_last = true;
        smtpc_conn_bdat_timer(c);
    }
}

/*
 * smtpc_conn_body_written - a body chunk is written: send the next one;
 * for BDAT only when pipelining, else its reply sends it (smtpc_conn_on_bdat).
 */
static void smtpc_conn_body_written(struct smtpc_conn *c)
{
    if (c->state == SMTPC_STATE_BDAT) {
        if (!(c->ext & SMTPC_EXT_PIPELINING) || c->bdat_last || c->bdat_failed)
            return;
        uv_timer_start(&c->timer, smtpc_conn_timer_cb, c->pool->cfg.command_timeout_ms, 0);
        smtpc_conn_body_next(c);
        return;
    }
    if (c->state != SMTPC_STATE_BODY)
        return; /* the last chunk: the reply to the dot is awaited in DOT */
    uv_timer_start(&c->timer, smtpc_conn_timer_cb, c->pool->cfg.command_timeout_ms, 0);
    smtpc_conn_body_next(c);
}

/*
 * smtpc_conn_body_next - write the next chunk of wire form; with the last
 * one (which ends in ".\r\n") the reply to the dot becomes owed. When the
 * body's chunk is used up, the next is asked of the source instead.
 */
static void smtpc_conn_body_next(struct smtpc_conn *c)
{
    size_t n = 0;
    size_t off = c->state == SMTPC_STATE_BDAT ? SMTPC_BDAT_HEAD_MAX : 0;
    while (n == 0 && !c->body.done) {
        if (smtpc_body_need(&c->body)) {
            smtpc_conn_source_read(c);
            return;
        }
        n = smtpc_body_fill(&c->body, c->chunk + off, SMTPC_CHUNK_MAX);
    }
    if (c->state == SMTPC_STATE_BDAT) {
        smtpc_conn_bdat_send(c, n);
        return;
    }
    if (smtpc_conn_write(c, c->chunk, n, true) != 0)
        return;
    if (c->body.done) {
        c->n_expected++;
        smtpc_conn_enter_state(c, SMTPC_STATE_DOT);
    }
}

static void smtpc_conn_source_cb(void *arg, int status, const uint8_t *data, size_t len, bool last);

/* smtpc_conn_source_read - ask the message's source for the next chunk of the body. */
static void smtpc_conn_source_read(struct smtpc_conn *c)
{
    const struct smtpc_source *src = c->job->msg->source;
    c->src_pending = true;
    int rv = src->read(src->data, smtpc_conn_source_cb, c);
    if (rv != 0) {
        c->src_pending = false;
        smtpc_conn_fail(c, 0, "message body failed, dropped before the end of data: %s",
                        hamr_strerror(rv));
        return;
    }
    /* Asynchronous processing continues in smtpc_conn_source_cb. */
}

/*
 * smtpc_conn_source_cb - the chunk asked of the source: send it, or drop
 * the connection before the final dot when the source failed.
 */
static void smtpc_conn_source_cb(void *arg, int status, const uint8_t *data, size_t len, bool last)
{
    struct smtpc_conn *c = arg;
    HAMR_ASSERT(c->src_pending && (c->state == SMTPC_STATE_BODY || c->state == SMTPC_STATE_BDAT));
    c->src_pending = false;
    if (status != 0) {
        smtpc_conn_fail(c, 0, "message body failed, dropped before the end of data: %s",
                        hamr_strerror(status));
        return;
    }
    smtpc_body_feed(&c->body, data, len, last);
    smtpc_conn_body_next(c);
}

/*
 * smtpc_conn_body_start - send the body after 354 (s BODY) or by BDAT (s
 * BDAT, once a recipient was accepted).
 */
static void smtpc_conn_body_start(struct smtpc_conn *c, enum smtpc_state s)
{
    const struct smtpc_msg *m = c->job->msg;
    if (m->source != NULL)
        smtpc_body_begin(&c->body); /* the first chunk is asked for at once */
    else
        smtpc_body_init(&c->body, m->body, m->body_len);
    if (s == SMTPC_STATE_BDAT)
        smtpc_body_bdat(&c->body);
    smtpc_conn_enter_state(c, s);
    smtpc_conn_body_next(c);
}

/* smtpc_conn_on_mail - the reply to MAIL FROM. */
static void smtpc_conn_on_mail(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    unsigned cls = r->code / 100;
    if (cls == 2) {
        c->mail_ok = true;
    } else if (cls == 4 || cls == 5) {
        smtpc_job_decide_rest(c->job, smtpc_status_of(r->code), r->code, r->text);
    } else {
        smtpc_conn_fail(c, r->code, "protocol error: reply %u to MAIL FROM from %s", r->code,
                        c->remote);
        return;
    }
    if (c->ext & SMTPC_EXT_PIPELINING) {
        smtpc_conn_enter_state(c, SMTPC_STATE_RCPT); /* RCPT replies are on their way */
        return;
    }
    if (!c->mail_ok) {
        smtpc_conn_tx_end(c);
        return;
    }
    if (smtpc_conn_send_rcpt(c, 0) != 0)
        return;
    smtpc_conn_enter_state(c, SMTPC_STATE_RCPT);
}

/* smtpc_conn_on_rcpt - the reply to RCPT TO number c->rcpt_idx. */
static void smtpc_conn_on_rcpt(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    const struct smtpc_msg *m = c->job->msg;
    unsigned cls = r->code / 100;
    if (c->mail_ok) {
        /* After a failed MAIL (pipelined) the RCPT replies mean nothing. */
        if (cls == 2) {
            c->job->rstate[c->rcpt_idx] = SMTPC_RCPT_ACCEPTED;
            c->n_accepted++;
        } else if (cls == 4 || cls == 5) {
            smtpc_job_decide(c->job, c->rcpt_idx, smtpc_status_of(r->code), r->code, r->text);
        } else {
            smtpc_conn_fail(c, r->code, "protocol error: reply %u to RCPT TO from %s", r->code,
                            c->remote);
            return;
        }
    }
    c->rcpt_idx++;
    bool pipelining = (c->ext & SMTPC_EXT_PIPELINING) != 0;
    if (c->rcpt_idx < m->n_rcpts) {
        if (!pipelining && smtpc_conn_send_rcpt(c, c->rcpt_idx) != 0)
            return;
        return; /* stay in RCPT */
    }
    if (pipelining && !c->bdat) {
        smtpc_conn_enter_state(c, SMTPC_STATE_DATA);
        return;
    }
    if (c->n_accepted == 0) {
        smtpc_conn_tx_end(c); /* no body for nobody: RSET */
        return;
    }
    if (c->bdat) {
        smtpc_conn_body_start(c, SMTPC_STATE_BDAT);
        return;
    }
    if (smtpc_conn_send(c, "DATA\r\n", 6, 1) != 0)
        return;
    smtpc_conn_enter_state(c, SMTPC_STATE_DATA);
}

/* smtpc_conn_on_data - the reply to DATA. */
static void smtpc_conn_on_data(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    unsigned cls = r->code / 100;
    if (cls == 3) {
        if (c->mail_ok && c->n_accepted > 0) {
            smtpc_conn_body_start(c, SMTPC_STATE_BODY);
            return;
        }
        /*
         * RFC 2920 3.1: a server may say 354 though no recipient was
         * accepted; end its data mode with an empty message, never the body.
         */
        c->dot_only = true;
        if (smtpc_conn_send(c, ".\r\n", 3, 1) != 0)
            return;
        smtpc_conn_enter_state(c, SMTPC_STATE_DOT);
        return;
    }
    if (cls == 4 || cls == 5) {
        if (c->mail_ok)
            smtpc_job_decide_rest(c->job, smtpc_status_of(r->code), r->code, r->text);
        smtpc_conn_tx_end(c);
        return;
    }
    smtpc_conn_fail(c, r->code, "protocol error: reply %u to DATA from %s", r->code, c->remote);
}

/*
 * smtpc_conn_dot_decide - the reply to the final dot decides the accepted
 * recipients. A next hop that offers DSN and took the message owes any
 * further notice for them (RFC 3461 5.2.2): dsn_passed.
 */
static void smtpc_conn_dot_decide(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    struct smtpc_job *job = c->job;
    bool passed = r->code / 100 == 2 && (c->ext & SMTPC_EXT_DSN) != 0;
    for (size_t i = 0; passed && i < job->msg->n_rcpts; i++)
        if (job->rstate[i] == SMTPC_RCPT_ACCEPTED)
            job->res[i].dsn_passed = true;
    smtpc_job_decide_rest(job, smtpc_status_of(r->code), r->code, r->text);
}

/* smtpc_conn_on_dot - the reply to the final dot decides the accepted recipients. */
static void smtpc_conn_on_dot(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    unsigned cls = r->code / 100;
    if (cls != 2 && cls != 4 && cls != 5) {
        smtpc_conn_fail(c, r->code, "protocol error: reply %u to end of data from %s", r->code,
                        c->remote);
        return;
    }
    if (!c->dot_only)
        smtpc_conn_dot_decide(c, r);
    c->dot_reply = true;
    smtpc_conn_tx_end(c);
}

/*
 * smtpc_conn_on_bdat - the reply to one BDAT chunk, in order. The reply to
 * LAST decides the accepted recipients as the one to the final dot does.
 * RFC 3030 2: after a 4xx or 5xx the transaction has failed (that reply
 * decides every open recipient) and no further BDAT may be sent; those
 * already on their way are answered and discarded, then RSET. Without
 * PIPELINING each 2xx sends the next chunk.
 */
static void smtpc_conn_on_bdat(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    unsigned cls = r->code / 100;
    if (cls != 2 && cls != 4 && cls != 5) {
        smtpc_conn_fail(c, r->code, "protocol error: reply %u to BDAT from %s", r->code, c->remote);
        return;
    }
    c->bdat_answered++;
    if (cls != 2 && !c->bdat_failed) {
        c->bdat_failed = true;
        smtpc_job_decide_rest(c->job, smtpc_status_of(r->code), r->code, r->text);
        if (c->src_pending) {
            const struct smtpc_source *src = c->job->msg->source;
            c->src_pending = false;
            src->cancel(src->data);
        }
    }
    if (c->bdat_failed) {
        if (c->n_expected == 0)
            smtpc_conn_tx_end(c); /* dot_reply is false: RSET */
        else
            smtpc_conn_bdat_timer(c);
        return;
    }
    if (c->bdat_last && c->bdat_answered == c->bdat_sent) {
        smtpc_conn_dot_decide(c, r);
        c->dot_reply = true;
        smtpc_conn_tx_end(c);
        return;
    }
    smtpc_conn_bdat_timer(c);
    if (!(c->ext & SMTPC_EXT_PIPELINING) && !c->bdat_last)
        smtpc_conn_body_next(c);
}

/* ------------------------------------------------------------------------ */
/* Session: greeting, EHLO, reply dispatch, reuse                           */
/* ------------------------------------------------------------------------ */

/*
 * smtpc_conn_next - the connection is READY: run the next job of its
 * destination, or idle until idle_timeout_ms, or QUIT once it has carried
 * max_msgs_per_conn messages. A loop, not recursion: jobs refused without
 * a word to the server (smtpc_conn_tx_check) are finished here one after
 * the other.
 */
static void smtpc_conn_next(struct smtpc_conn *c)
{
    while (c->state != SMTPC_STATE_CLOSING) {
        smtpc_conn_enter_state(c, SMTPC_STATE_READY);
        if (c->job == NULL) {
            struct smtpc_dest *d = c->dest;
            /*
             * Above the cap of its group, or idle while another variant's
             * delivery waits: go. Without hold_ms no connection of a group
             * with a cap ever idles: one that would, with every other busy
             * with one delivery and none waiting, is above ceil(deliveries /
             * per_conn). With it, one idles while the recent peak allows.
             */
            if (c->n_msgs >= c->pool->cfg.max_msgs_per_conn || smtpc_group_over(c) ||
                (d->q_head == NULL && smtpc_group_waits(c->pool, d->group))) {
                smtpc_conn_quit(c);
                return;
            }
            if (d->q_head == NULL) {
                c->idle_since = uv_now(c->pool->loop);
                return; /* idle; smtpc_conn_timer_cb ends it */
            }
            c->job = d->q_head;
            d->q_head = c->job->next;
            if (d->q_head == NULL)
                d->q_tail = NULL;
            c->job->next = NULL;
            c->job->n_tried = 1; /* the connection it is given */
            if (smtpc_job_withdrawn(c->job)) {
                struct smtpc_job *job = c->job;
                c->job = NULL;
                job->n_tried = 0;
                smtpc_job_decide_rest(job, SMTPC_TEMP, 0, "withdrawn before it started");
                smtpc_job_finish(job, NULL);
                continue;
            }
        }
        if (smtpc_conn_start_tx(c) == 0)
            return;
    }
}

/*
 * smtpc_conn_auth_needs_tls - c's destination has credentials and they may
 * go only inside TLS (no auth_plaintext): STARTTLS is required, whatever
 * the policy (Postfix smtp_sasl_tls_security_options, noplaintext).
 */
static bool smtpc_conn_auth_needs_tls(const struct smtpc_conn *c)
{
    return c->dest != NULL && c->dest->auth && !c->pool->cfg.auth_plaintext;
}

static void smtpc_conn_auth_start(struct smtpc_conn *c);

/*
 * smtpc_conn_after_ehlo - EHLO (or HELO) was accepted: start TLS when it is
 * offered and not up yet; refuse to go on in plaintext when the policy
 * demands TLS (SECURITY.md S17) or AUTH would go in plaintext (S23); then
 * authenticate when the destination has credentials, else run
 * transactions.
 */
static void smtpc_conn_after_ehlo(struct smtpc_conn *c)
{
    if (!c->tls_up) {
        bool offered = (c->ext & SMTPC_EXT_STARTTLS) != 0;
        if (offered && c->pool->tls_ctx != NULL) {
            /* Until the handshake is done, any failure is a failed TLS negotiation. */
            c->tls_state = SMTPC_TLS_STATE_HANDSHAKE_FAILED;
            if (smtpc_conn_send(c, "STARTTLS\r\n", 10, 1) != 0)
                return;
            smtpc_conn_enter_state(c, SMTPC_STATE_STARTTLS);
            return;
        }
        bool may = !smtpc_conn_tls_required(c);
        c->tls_state = offered ? SMTPC_TLS_STATE_NO_CLIENT_CTX
                       : may   ? SMTPC_TLS_STATE_NOT_OFFERED
                               : SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED;
        /* Without a client context the fault is ours: deferred below. */
        if (!offered && c->dest->requiretls) {
            bool dane = smtpc_conn_dane(c);
            if (dane)
                c->tls_state = SMTPC_TLS_STATE_DANE_FAILED;
            c->pool->stats.dane_failed += dane;
            smtpc_conn_requiretls_fail(c, "STARTTLS was not offered by host %s[%s]", c->host,
                                       c->ip);
            return;
        }
        if (!may && smtpc_conn_dane(c)) {
            c->tls_state = SMTPC_TLS_STATE_DANE_FAILED;
            c->pool->stats.dane_failed++;
            smtpc_conn_fail(c, 0, "4.7.5 DANE: TLS required (TLSA records) but %s by %s",
                            offered ? "no TLS client context" : "STARTTLS not offered", c->remote);
            return;
        }
        if (!may) {
            if (offered)
                smtpc_conn_fail(c, 0, "TLS required but no TLS client context");
            else
                smtpc_conn_fail(c, 0, "TLS required but not offered by %s", c->remote);
            return;
        }
        if (smtpc_conn_auth_needs_tls(c)) {
            /* The password is never sent in the clear (SECURITY.md S23). */
            if (!offered)
                c->tls_state = SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED;
            smtpc_conn_fail(
                c, 0, "4.7.0 TLS not available with %s (%s) and AUTH would be sent in plaintext",
                c->remote, offered ? "no TLS client context" : "STARTTLS not offered");
            return;
        }
    }
    if (c->dest->auth) {
        smtpc_conn_auth_start(c);
        return;
    }
    smtpc_conn_next(c);
}

/*
 * smtpc_conn_send_secret - write line (len octets, a command that carries
 * credentials and owes one reply), log it at debug level as shown, never as
 * it is, and wipe line. 0, or the attempt failed and a negative code.
 */
static int smtpc_conn_send_secret(struct smtpc_conn *c, char *line, size_t len, const char *shown)
{
    log_debug("smtpc conn=%llu relay=%s send \"%s\"", c->id, c->remote, shown);
    int rv = smtpc_conn_send(c, line, len, 1);
    OPENSSL_cleanse(line, len);
    return rv;
}

/*
 * smtpc_conn_send_b64 - write prefix, the base64 of data (len octets) and
 * CRLF as one command that carries credentials (smtpc_conn_send_secret).
 */
static int smtpc_conn_send_b64(struct smtpc_conn *c,
                               const char *prefix,
                               const uint8_t *data,
                               size_t len,
                               const char *shown)
{
    /* RFC 4954 4: an AUTH line may be 12288 octets; ours are far shorter. */
    char line[32 + (SMTPC_AUTH_USER_MAX + SMTPC_AUTH_PASS_MAX + 4) / 3 * 4 + 4];
    size_t n = strlen(prefix);
    HAMR_ASSERT(n < 32);
    memcpy(line, prefix, n);
    int rv = b64_encode(data, len, line + n, sizeof(line) - n - 2);
    HAMR_ASSERT(rv == 0); /* user and password lengths were checked */
    n += strlen(line + n);
    memcpy(line + n, "\r\n", 2);
    rv = smtpc_conn_send_secret(c, line, n + 2, shown);
    OPENSSL_cleanse(line, sizeof(line));
    return rv;
}

/*
 * smtpc_conn_auth_start - after the last EHLO, with credentials: AUTH
 * PLAIN with the initial response (RFC 4616 2: authzid empty, NUL, user,
 * NUL, password), else AUTH LOGIN; a next hop that offers neither is
 * deferred (smtpc_delivery explains why not plaintext-without-AUTH).
 */
static void smtpc_conn_auth_start(struct smtpc_conn *c)
{
    const struct smtpc_dest *d = c->dest;
    if ((c->ext & SMTPC_EXT_AUTH_PLAIN) != 0) {
        uint8_t msg[SMTPC_AUTH_USER_MAX + SMTPC_AUTH_PASS_MAX + 2];
        size_t ul = strlen(d->auth_user), pl = strlen(d->auth_pass);
        msg[0] = '\0';
        memcpy(msg + 1, d->auth_user, ul);
        msg[1 + ul] = '\0';
        memcpy(msg + 2 + ul, d->auth_pass, pl);
        int rv = smtpc_conn_send_b64(c, "AUTH PLAIN ", msg, 2 + ul + pl, "AUTH PLAIN ********");
        OPENSSL_cleanse(msg, sizeof(msg));
        if (rv != 0)
            return;
        smtpc_conn_enter_state(c, SMTPC_STATE_AUTH);
        return;
    }
    if ((c->ext & SMTPC_EXT_AUTH_LOGIN) != 0) {
        if (smtpc_conn_send(c, "AUTH LOGIN\r\n", 12, 1) != 0)
            return;
        smtpc_conn_enter_state(c, SMTPC_STATE_AUTH_LOGIN);
        return;
    }
    if ((c->ext & SMTPC_EXT_AUTH) != 0)
        smtpc_conn_fail(c, 0,
                        "4.7.0 next hop %s offers no AUTH mechanism hamr supports (PLAIN, LOGIN)",
                        c->remote);
    else
        smtpc_conn_fail(c, 0, "4.7.0 next hop %s does not offer AUTH", c->remote);
}

/*
 * smtpc_conn_auth_failed - AUTH (or a step of LOGIN) was answered with r,
 * not 235 or 334: every recipient is deferred, as Postfix does ("SASL
 * authentication failed"; a 535 means wrong credentials, which the
 * operator must fix, and mail waits for that rather than bouncing), and
 * the connection is discarded. No other address is tried: EHLO was
 * accepted, so smtpc_conn_may_move_on says no.
 */
static void smtpc_conn_auth_failed(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    smtpc_conn_fail(c, r->code, "4.7.0 SASL authentication failed with %s: %u %s", c->remote,
                    r->code, r->text);
}

/* smtpc_conn_on_auth - a reply in one of the AUTH states. */
static void smtpc_conn_on_auth(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    const struct smtpc_dest *d = c->dest;
    switch (c->state) {
        case SMTPC_STATE_AUTH_LOGIN:
            if (r->code != 334)
                break;
            if (smtpc_conn_send_b64(c, "", (const uint8_t *)d->auth_user, strlen(d->auth_user),
                                    "******** (LOGIN user name)") != 0)
                return;
            smtpc_conn_enter_state(c, SMTPC_STATE_AUTH_USER);
            return;
        case SMTPC_STATE_AUTH_USER:
            if (r->code != 334)
                break;
            if (smtpc_conn_send_b64(c, "", (const uint8_t *)d->auth_pass, strlen(d->auth_pass),
                                    "******** (LOGIN password)") != 0)
                return;
            smtpc_conn_enter_state(c, SMTPC_STATE_AUTH);
            return;
        default:
            /* RFC 4954 6: 235 2.7.0 Authentication Succeeded. */
            if (r->code / 100 != 2)
                break;
            char pr[SMTPC_AUTH_USER_MAX + 1];
            log_info("smtpc conn=%llu relay=%s authenticated user=%s", c->id, c->remote,
                     log_printable(pr, sizeof(pr), d->auth_user, strlen(d->auth_user)));
            smtpc_conn_next(c);
            return;
    }
    smtpc_conn_auth_failed(c, r);
}

/*
 * smtpc_conn_tls_dane - the TLSA records of c's target onto its new TLS
 * engine, the TLSA base domain being the target's host (the MX host name,
 * RFC 7672 2.2.3). 0; or the attempt failed (deferred) and HAMR_EIO: the
 * pool has no DANE, OpenSSL refused, or no record was usable to it.
 */
static int smtpc_conn_tls_dane(struct smtpc_conn *c)
{
    const struct smtpc_target *t = smtpc_conn_target(c);
    if (!c->pool->tls_dane || tls_dane(c->tls, t->host) != 0) {
        smtpc_conn_tls_fail(c, 0, c->pool->tls_dane ? tls_error(c->tls) : "no DANE in OpenSSL");
        return HAMR_EIO;
    }
    size_t added = 0;
    for (size_t i = 0; i < t->n_tlsa && i < SMTPC_TLSA_MAX; i++) {
        const struct smtpc_tlsa *r = &t->tlsa[i];
        int rv = tls_dane_add(c->tls, r->usage, r->selector, r->mtype, r->data, r->len);
        if (rv < 0) {
            smtpc_conn_tls_fail(c, 0, tls_error(c->tls));
            return HAMR_EIO;
        }
        added += (size_t)rv;
    }
    if (added == 0) {
        /* RFC 7672 2.2: TLSA records, none usable: TLS is still mandatory, and fails here. */
        smtpc_conn_tls_fail(c, 0, "no usable TLSA record");
        return HAMR_EIO;
    }
    return 0;
}

/*
 * smtpc_conn_tls_start - 220 to STARTTLS: start the handshake. The caller
 * drops whatever plaintext followed the 220 in the same read (S21).
 */
static void smtpc_conn_tls_start(struct smtpc_conn *c)
{
    struct smtpc_dest *d = c->dest;
    bool verify = smtpc_conn_verify(c);
    /* SNI and the name to verify: the delivery's verify_host, else the target's host. */
    const char *name = d->verify_host[0] != '\0' ? d->verify_host : c->host;
    int rv = tls_new(c->pool->tls_ctx, false, name, verify, &c->tls);
    if (rv != 0) {
        smtpc_conn_tls_fail(c, 0, hamr_strerror(rv));
        return;
    }
    if (smtpc_conn_dane_auth(c) && smtpc_conn_tls_dane(c) != 0)
        return;
    smtpc_reply_init(&c->parser);
    smtpc_conn_enter_state(c, SMTPC_STATE_TLS);
    rv = tls_handshake(c->tls);
    if (smtpc_conn_tls_flush(c, false) != 0)
        return;
    if (rv < 0)
        smtpc_conn_tls_rejected(c, tls_error(c->tls));
}

/*
 * smtpc_conn_refused - the greeting, EHLO or HELO was refused: fail the
 * attempt, recording the refusal as its TLS state unless TLS was already up
 * (an EHLO refused after STARTTLS).
 */
static void smtpc_conn_refused(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    if (!c->tls_up)
        c->tls_state = SMTPC_TLS_STATE_REFUSED_BEFORE_EHLO;
    smtpc_conn_fail(c, r->code, "%s", r->text);
}

/* smtpc_conn_on_reply - one complete, solicited reply for the current state. */
static void smtpc_conn_on_reply(struct smtpc_conn *c, const struct smtpc_reply *r)
{
    /* A greeting was read, whatever it said: one session of session_limit. */
    if (c->state == SMTPC_STATE_GREETING)
        c->att.n_sessions++;
    /* RFC 5321 3.8: 421 means the server is closing the session. */
    if (r->code == 421 && c->state != SMTPC_STATE_QUIT) {
        if (c->state == SMTPC_STATE_GREETING || c->state == SMTPC_STATE_EHLO ||
            c->state == SMTPC_STATE_HELO)
            smtpc_conn_refused(c, r);
        else
            smtpc_conn_fail(c, r->code, "%s", r->text);
        return;
    }
    switch (c->state) {
        case SMTPC_STATE_GREETING:
            if (r->code != 220) {
                /* Like Postfix: a rejecting greeting fails this attempt only. */
                smtpc_conn_refused(c, r);
                return;
            }
            if (smtpc_conn_send_line(c, "EHLO %s\r\n", c->pool->cfg.helo_name) != 0)
                return;
            smtpc_conn_enter_state(c, SMTPC_STATE_EHLO);
            return;
        case SMTPC_STATE_EHLO:
            if (r->code / 100 == 2) {
                /* After STARTTLS only this list counts (RFC 3207 4.2). */
                c->ext = r->ext;
                c->size_limit = r->size_limit;
                smtpc_conn_after_ehlo(c);
            } else if (r->code / 100 == 5) {
                /* RFC 5321 3.2: a server that does not know EHLO gets HELO. */
                if (smtpc_conn_send_line(c, "HELO %s\r\n", c->pool->cfg.helo_name) != 0)
                    return;
                smtpc_conn_enter_state(c, SMTPC_STATE_HELO);
            } else {
                smtpc_conn_refused(c, r);
            }
            return;
        case SMTPC_STATE_HELO:
            if (r->code / 100 != 2) {
                smtpc_conn_refused(c, r);
                return;
            }
            c->ext = 0;
            c->size_limit = 0;
            smtpc_conn_after_ehlo(c);
            return;
        case SMTPC_STATE_STARTTLS:
            if (r->code != 220) {
                char why[SMTPC_REPLY_TEXT_MAX + 32];
                snprintf(why, sizeof(why), "STARTTLS refused: %u %s", r->code, r->text);
                smtpc_conn_tls_fail(c, r->code, why);
                return;
            }
            smtpc_conn_tls_start(c);
            return;
        case SMTPC_STATE_AUTH:
        case SMTPC_STATE_AUTH_LOGIN:
        case SMTPC_STATE_AUTH_USER:
            smtpc_conn_on_auth(c, r);
            return;
        case SMTPC_STATE_MAIL:
            smtpc_conn_on_mail(c, r);
            return;
        case SMTPC_STATE_RCPT:
            smtpc_conn_on_rcpt(c, r);
            return;
        case SMTPC_STATE_DATA:
            smtpc_conn_on_data(c, r);
            return;
        case SMTPC_STATE_DOT:
            smtpc_conn_on_dot(c, r);
            return;
        case SMTPC_STATE_BDAT:
            smtpc_conn_on_bdat(c, r);
            return;
        case SMTPC_STATE_RSET:
            if (r->code / 100 != 2) {
                smtpc_conn_fail(c, r->code, "RSET refused: %s", r->text);
                return;
            }
            smtpc_conn_next(c);
            return;
        case SMTPC_STATE_QUIT:
            smtpc_conn_close(c);
            return;
        case SMTPC_STATE_CONNECTING:
        case SMTPC_STATE_READY:
        case SMTPC_STATE_BODY:
        case SMTPC_STATE_TLS:
        case SMTPC_STATE_CLOSING:
            break;
    }
    /* n_expected is 0 in these states, so smtpc_conn_on_read never gets here. */
    HAMR_ASSERT(0 && "reply in a state that owes none");
}

/*
 * smtpc_conn_on_read - feed what one read returned to the reply parser.
 * A reply can only answer a command written before the bytes were read, so
 * the replies this buffer may hold are counted before any of them is acted on
 * (n_avail): a 250 that arrives together with the 354, before our dot, is a
 * protocol error and not the answer to the dot (SECURITY.md S21).
 */
static void smtpc_conn_on_read(struct smtpc_conn *c, const char *data, size_t len)
{
    c->n_avail = c->n_expected;
    while (len > 0 && c->state != SMTPC_STATE_CLOSING) {
        size_t used = 0;
        int rv = smtpc_reply_feed(&c->parser, data, len, &used);
        data += used;
        len -= used;
        if (rv < 0) {
            smtpc_conn_fail(c, 0, "malformed reply from %s in state %s: %s", c->remote,
                            smtpc_state_names[c->state], c->parser.errmsg);
            return;
        }
        if (rv == 0)
            return;
        struct smtpc_reply r = c->parser.reply;
        smtpc_reply_next(&c->parser);
        if (c->n_avail == 0) {
            smtpc_conn_fail(c, 0, "protocol error: unexpected reply %u from %s in state %s", r.code,
                            c->remote, smtpc_state_names[c->state]);
            return;
        }
        c->n_avail--;
        c->n_expected--;
        smtpc_conn_on_reply(c, &r);
        if (c->state == SMTPC_STATE_TLS) {
            /* Plaintext after the 220 to STARTTLS is injected: never a reply (S21). */
            if (len > 0)
                log_info("smtpc conn=%llu relay=%s discarded %zu octets after 220 to STARTTLS",
                         c->id, c->remote, len);
            return;
        }
    }
}

/* smtpc_conn_alloc_cb - every read lands in the connection's fixed buffer. */
static void smtpc_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct smtpc_conn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* smtpc_conn_on_eof - the server closed (nread UV_EOF) or the read failed. */
static void smtpc_conn_on_eof(struct smtpc_conn *c, ssize_t nread)
{
    if (c->state == SMTPC_STATE_TLS) {
        smtpc_conn_tls_fail(
            c, 0,
            nread == UV_EOF ? "connection closed during the handshake" : uv_strerror((int)nread));
        return;
    }
    if (c->state == SMTPC_STATE_QUIT ||
        (c->state == SMTPC_STATE_READY && c->job == NULL && nread == UV_EOF)) {
        smtpc_conn_close(c);
        return;
    }
    if (nread == UV_EOF)
        smtpc_conn_fail(c, 0, "lost connection with %s while waiting for %s", c->remote,
                        smtpc_state_waits[c->state]);
    else
        smtpc_conn_fail(c, 0, "read from %s: %s", c->remote, uv_strerror((int)nread));
}

/*
 * smtpc_conn_tls_input - ciphertext from the server: advance the handshake
 * (then EHLO again), or decrypt replies and hand them to the parser.
 */
static void smtpc_conn_tls_input(struct smtpc_conn *c, const char *data, size_t len)
{
    if (tls_feed(c->tls, data, len) != 0) {
        smtpc_conn_tls_fail(c, 0, "too much undecrypted input");
        return;
    }
    if (!c->tls_up) {
        int rv = tls_handshake(c->tls);
        if (smtpc_conn_tls_flush(c, false) != 0)
            return;
        if (rv < 0) {
            smtpc_conn_tls_rejected(c, tls_error(c->tls));
            return;
        }
        if (rv == 0)
            return;
        bool dane = smtpc_conn_dane_auth(c);
        if (dane && !tls_dane_verified(c->tls)) {
            /* SSL_VERIFY_PEER fails the handshake first; never go on unauthenticated. */
            smtpc_conn_tls_rejected(c, "no TLSA record matched");
            return;
        }
        c->tls_up = true;
        tls_describe(c->tls, c->tls_desc, sizeof(c->tls_desc));
        bool verified = dane || smtpc_conn_verify(c);
        c->tls_state = verified ? SMTPC_TLS_STATE_VERIFIED : SMTPC_TLS_STATE_UNVERIFIED;
        if (dane)
            c->pool->stats.dane_verified++;
        if (!verified) {
            size_t n = strlen(c->tls_desc);
            snprintf(c->tls_desc + n, sizeof(c->tls_desc) - n, " unverified");
        }
        log_info("smtpc conn=%llu relay=%s policy=%s tls=\"%s\"", c->id, c->remote,
                 smtpc_tls_policy_name(c->dest->policy), c->tls_desc);
        c->ext = 0;
        c->size_limit = 0;
        if (smtpc_conn_send_line(c, "EHLO %s\r\n", c->pool->cfg.helo_name) != 0)
            return;
        smtpc_conn_enter_state(c, SMTPC_STATE_EHLO);
    }
    while (c->state != SMTPC_STATE_CLOSING) {
        long n = tls_read(c->tls, c->pbuf, sizeof(c->pbuf));
        if (n == 0)
            break;
        if (n == HAMR_ESHUTDOWN) {
            smtpc_conn_on_eof(c, UV_EOF);
            return;
        }
        if (n < 0) {
            smtpc_conn_fail(c, 0, "TLS read from %s: %s", c->remote, tls_error(c->tls));
            return;
        }
        smtpc_conn_on_read(c, c->pbuf, (size_t)n);
    }
    if (c->state != SMTPC_STATE_CLOSING)
        smtpc_conn_tls_flush(c, false);
}

/* smtpc_conn_read_cb - bytes, EOF or a read error from the server. */
static void smtpc_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct smtpc_conn *c = s->data;
    if (nread == 0 || c->state == SMTPC_STATE_CLOSING)
        return;
    if (nread > 0 && c->tls != NULL)
        smtpc_conn_tls_input(c, buf->base, (size_t)nread);
    else if (nread > 0)
        smtpc_conn_on_read(c, buf->base, (size_t)nread);
    else
        smtpc_conn_on_eof(c, nread);
}

/* smtpc_conn_timer_cb - the deadline of the current state has passed. */
static void smtpc_conn_timer_cb(uv_timer_t *t)
{
    struct smtpc_conn *c = t->data;
    switch (c->state) {
        case SMTPC_STATE_CLOSING:
            return;
        case SMTPC_STATE_READY:
            if (c->job == NULL) {
                /* A group's idle connection looks again every hold_ms: its cap may have fallen. */
                const struct smtpc_group *g = c->dest != NULL ? c->dest->group : NULL;
                if (g != NULL && g->per_conn > 0 && g->hold_ms > 0 && !smtpc_group_over(c) &&
                    uv_now(c->pool->loop) - c->idle_since < c->pool->cfg.idle_timeout_ms) {
                    uv_timer_start(&c->timer, smtpc_conn_timer_cb, g->hold_ms, 0);
                    return;
                }
                log_debug("smtpc conn=%llu relay=%s idle timeout", c->id, c->remote);
                smtpc_conn_quit(c);
                return;
            }
            break;
        case SMTPC_STATE_QUIT:
            smtpc_conn_close(c);
            return;
        case SMTPC_STATE_TLS:
            smtpc_conn_tls_fail(c, 0, "timeout");
            return;
        case SMTPC_STATE_CONNECTING:
            if (c->remote[0] != '\0')
                smtpc_conn_fail(c, 0, "timeout connecting to %s", c->remote);
            else
                smtpc_conn_fail(c, 0, "timeout resolving host");
            return;
        default:
            break;
    }
    smtpc_conn_fail(c, 0, "timeout waiting for %s from %s", smtpc_state_waits[c->state], c->remote);
}

/* ------------------------------------------------------------------------ */
/* Closing and freeing connections                                          */
/* ------------------------------------------------------------------------ */

/* smtpc_conn_free - the last close callback has run. */
static void smtpc_conn_free(struct smtpc_conn *c)
{
    struct smtpc_pool *p = c->pool;
    tls_free(c->tls);
    free(c->att.targets);
    free(c);
    HAMR_ASSERT(p->n_alive > 0);
    p->n_alive--;
    smtpc_pool_maybe_free(p);
}

/* smtpc_conn_handle_close_cb - one of the connection's handles is closed. */
static void smtpc_conn_handle_close_cb(uv_handle_t *h)
{
    struct smtpc_conn *c = h->data;
    HAMR_ASSERT(c->handles_open > 0);
    c->handles_open--;
    if (c->handles_open == 0 && !c->gai_pending)
        smtpc_conn_free(c);
}

/*
 * smtpc_conn_close - discard the connection (idempotent). It leaves its
 * destination at once, so that a replacement may be opened; the memory is
 * freed after both handle close callbacks and any pending lookup. Any job
 * must have been taken off c before.
 */
static void smtpc_conn_close(struct smtpc_conn *c)
{
    if (c->state == SMTPC_STATE_CLOSING) {
        /* A resolve callback after the handles closed lands here. */
        if (c->handles_open == 0 && !c->gai_pending)
            smtpc_conn_free(c);
        return;
    }
    HAMR_ASSERT(c->job == NULL);
    smtpc_conn_enter_state(c, SMTPC_STATE_CLOSING);
    struct smtpc_dest *d = c->dest;
    for (struct smtpc_conn **pp = &d->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    d->n_conns--;
    struct smtpc_group *g = d->group;
    if (g != NULL) {
        g->n_conns--;
        g->n_quitting -= c->group_quit ? 1 : 0;
        c->group_quit = false;
    }
    c->dest = NULL;
    c->next = NULL;
    if (c->gai_pending)
        uv_cancel((uv_req_t *)&c->gai); /* the callback still runs, with an error */
    if (c->rsv_pending) {
        /* Unlike uv_cancel, the resolver's cancel means its callback never runs. */
        const struct smtpc_resolver *rsv = c->pool->cfg.resolver;
        c->rsv_pending = false;
        rsv->cancel(rsv->data, c->rsv_handle);
        c->rsv_handle = NULL;
    }
    c->handles_open = 2;
    uv_close((uv_handle_t *)&c->tcp, smtpc_conn_handle_close_cb);
    uv_close((uv_handle_t *)&c->timer, smtpc_conn_handle_close_cb);
    /* A delivery of d, or of another variant of its group, may wait for this one to go. */
    if (d->q_head != NULL || (g != NULL && g->n_jobs > 0))
        smtpc_pool_kick(c->pool);
}

/* ------------------------------------------------------------------------ */
/* The pool                                                                 */
/* ------------------------------------------------------------------------ */

/* smtpc_dest_dispatch - give queued jobs to idle or new connections. */
static void smtpc_dest_dispatch(struct smtpc_dest *d)
{
    struct smtpc_pool *p = d->pool;
    while (d->q_head != NULL && !p->closing) {
        struct smtpc_conn *idle = NULL;
        for (struct smtpc_conn *c = d->conns; c != NULL; c = c->next)
            if (c->state == SMTPC_STATE_READY && c->job == NULL)
                idle = c;
        if (idle != NULL) {
            smtpc_conn_next(idle); /* takes jobs from d->q_head itself */
            continue;
        }
        if (d->n_conns >= p->cfg.max_conns_per_dest)
            return;
        /* An idle one of the group is another variant's: wait for one to end. */
        if (d->group != NULL && d->group->n_conns >= smtpc_group_cap(p, d->group))
            return;
        struct smtpc_job *job = d->q_head;
        d->q_head = job->next;
        if (d->q_head == NULL)
            d->q_tail = NULL;
        job->next = NULL;
        if (smtpc_job_withdrawn(job)) {
            smtpc_job_decide_rest(job, SMTPC_TEMP, 0, "withdrawn before it started");
            smtpc_job_finish(job, NULL);
            continue;
        }
        smtpc_conn_new(d, job);
    }
}

/* smtpc_pool_kick_cb - dispatch every destination, then drop empty ones. */
static void smtpc_pool_kick_cb(uv_timer_t *t)
{
    struct smtpc_pool *p = t->data;
    /* Callbacks run from here may add destinations (at the head) but never remove one. */
    for (struct smtpc_dest *d = p->dests; d != NULL && !p->closing; d = d->next)
        smtpc_dest_dispatch(d);
    struct smtpc_dest **pp = &p->dests;
    while (*pp != NULL) {
        struct smtpc_dest *d = *pp;
        if (d->conns == NULL && d->q_head == NULL) {
            *pp = d->next;
            smtpc_dest_free(d);
        } else {
            pp = &d->next;
        }
    }
}

/* smtpc_pool_kick - run smtpc_pool_kick_cb on the next loop iteration. */
static void smtpc_pool_kick(struct smtpc_pool *p)
{
    if (!p->closing)
        uv_timer_start(&p->kick, smtpc_pool_kick_cb, 0, 0);
}

/* smtpc_pool_kick_close_cb - the kick timer is closed. */
static void smtpc_pool_kick_close_cb(uv_handle_t *h)
{
    struct smtpc_pool *p = h->data;
    HAMR_ASSERT(p->n_alive > 0);
    p->n_alive--;
    smtpc_pool_maybe_free(p);
}

/* smtpc_pool_maybe_free - after close, free the pool once nothing is alive. */
static void smtpc_pool_maybe_free(struct smtpc_pool *p)
{
    if (!p->closing || p->n_alive > 0)
        return;
    while (p->dests != NULL) {
        struct smtpc_dest *d = p->dests;
        HAMR_ASSERT(d->conns == NULL && d->q_head == NULL);
        p->dests = d->next;
        smtpc_dest_free(d);
    }
    void (*cb)(void *) = p->closed_cb;
    void *arg = p->closed_arg;
    SSL_CTX_free(p->tls_ctx);
    free(p);
    if (cb != NULL)
        cb(arg);
}

/* smtpc_pool_new - a pool on loop; cfg is copied; zero fields take defaults. */
struct smtpc_pool *smtpc_pool_new(uv_loop_t *loop, const struct smtpc_config *cfg)
{
    struct smtpc_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->cfg = *cfg;
    struct smtpc_config *c = &p->cfg;
    c->helo_name[sizeof(c->helo_name) - 1] = '\0';
    bool helo_ok = c->helo_name[0] != '\0';
    for (const char *s = c->helo_name; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            helo_ok = false;
    if (!helo_ok) {
        log_warn("smtpc helo_name empty or not printable, using localhost");
        hamr_strlcpy(c->helo_name, "localhost", sizeof(c->helo_name));
    }
    if (c->connect_timeout_ms == 0)
        c->connect_timeout_ms = 30 * 1000;
    if (c->command_timeout_ms == 0)
        c->command_timeout_ms = 300 * 1000;
    if (c->data_done_timeout_ms == 0)
        c->data_done_timeout_ms = 600 * 1000;
    if (c->idle_timeout_ms == 0)
        c->idle_timeout_ms = 10 * 1000;
    if (c->max_conns_per_dest == 0)
        c->max_conns_per_dest = 10;
    if (c->max_msgs_per_conn == 0)
        c->max_msgs_per_conn = 100;
    if (c->address_limit == 0)
        c->address_limit = 5;
    if (c->session_limit == 0)
        c->session_limit = 2;
    c->tls_ca_file[sizeof(c->tls_ca_file) - 1] = '\0';
    if (c->tls_ctx != NULL && SSL_CTX_up_ref(c->tls_ctx) == 1) {
        p->tls_ctx = c->tls_ctx;
    } else {
        char err[TLS_ERR_MAX + 64];
        p->tls_ctx = tls_client_ctx_new(c->tls_ca_file, err, sizeof(err));
        if (p->tls_ctx == NULL)
            log_warn(
                "smtpc no STARTTLS: policy may goes plaintext, encrypt and verify defer "
                "err=\"%s\"",
                err);
    }
    if (p->tls_ctx != NULL) {
        char err[TLS_ERR_MAX + 64];
        p->tls_dane = tls_client_ctx_dane(p->tls_ctx, err, sizeof(err)) == 0;
        if (!p->tls_dane)
            log_warn("smtpc no DANE: targets with TLSA records are deferred err=\"%s\"", err);
    }
    c->tls_ctx = NULL; /* the pool's reference is p->tls_ctx */
    uv_timer_init(loop, &p->kick);
    p->kick.data = p;
    p->n_alive = 1; /* the kick timer */
    return p;
}

/* smtpc_addr_ok - may this address go between <> on a command line? */
static bool smtpc_addr_ok(const char *a)
{
    if (a == NULL)
        return false;
    size_t n = 0;
    for (; a[n] != '\0'; n++) {
        unsigned char ch = (unsigned char)a[n];
        if (n >= SMTPC_ADDR_MAX || ch < 0x20 || ch == 0x7f || ch == '<' || ch == '>')
            return false;
    }
    return true;
}

/*
 * smtpc_cred_ok - a user name or password fit for AUTH: 1..max octets, no
 * control octet (RFC 4616 forbids NUL; a CR or LF would end the line).
 */
static bool smtpc_cred_ok(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (n >= max || (unsigned char)s[n] < 0x20 || s[n] == 0x7f)
            return false;
    return n > 0;
}

/* smtpc_host_ok - a host name or literal fit for logs and SNI. */
static bool smtpc_host_ok(const char *host)
{
    if (host == NULL || host[0] == '\0' || strlen(host) > SMTPC_HOST_MAX)
        return false;
    for (const char *s = host; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* smtpc_dest_patterns_eq - d keeps to exactly the patterns of dv (in order). */
static bool smtpc_dest_patterns_eq(const struct smtpc_dest *d, const struct smtpc_delivery *dv)
{
    if (d->n_patterns != dv->n_mx_patterns)
        return false;
    for (size_t i = 0; i < d->n_patterns; i++)
        if (strcmp(d->pattern_v[i], dv->mx_patterns[i]) != 0)
            return false;
    return true;
}

/* smtpc_dest_free - a destination with no job and no connection left. */
static void smtpc_dest_free(struct smtpc_dest *d)
{
    smtpc_group_put(d->pool, d->group);
    OPENSSL_cleanse(d->auth_pass, sizeof(d->auth_pass));
    free(d->patterns);
    free(d->pattern_v);
    free(d);
}

/* smtpc_dest_set_patterns - d's own copy of dv's patterns; false on no memory. */
static bool smtpc_dest_set_patterns(struct smtpc_dest *d, const struct smtpc_delivery *dv)
{
    if (dv->n_mx_patterns == 0)
        return true;
    size_t len = 0;
    for (size_t i = 0; i < dv->n_mx_patterns; i++)
        len += strlen(dv->mx_patterns[i]) + 1;
    d->patterns = malloc(len);
    d->pattern_v = calloc(dv->n_mx_patterns, sizeof(*d->pattern_v));
    if (d->patterns == NULL || d->pattern_v == NULL)
        return false;
    char *at = d->patterns;
    for (size_t i = 0; i < dv->n_mx_patterns; i++) {
        size_t n = strlen(dv->mx_patterns[i]) + 1;
        memcpy(at, dv->mx_patterns[i], n);
        d->pattern_v[i] = at;
        at += n;
    }
    d->n_patterns = dv->n_mx_patterns;
    return true;
}

/*
 * smtpc_pool_dest - the destination of dv (verify_host already "" for NULL)
 * for messages with or without REQUIRETLS, created when missing.
 */
static struct smtpc_dest *smtpc_pool_dest(struct smtpc_pool *p,
                                          const struct smtpc_delivery *dv,
                                          bool requiretls)
{
    bool auth = dv->auth_user != NULL;
    const char *group = dv->group != NULL ? dv->group : "";
    for (struct smtpc_dest *d = p->dests; d != NULL; d = d->next)
        if (d->port == dv->port && d->policy == dv->policy && d->requiretls == requiretls &&
            strcmp(d->group != NULL ? d->group->key : "", group) == 0 &&
            strcmp(d->host, dv->host) == 0 && strcmp(d->verify_host, dv->verify_host) == 0 &&
            smtpc_dest_patterns_eq(d, dv) && d->auth == auth &&
            (!auth || (strcmp(d->auth_user, dv->auth_user) == 0 &&
                       strcmp(d->auth_pass, dv->auth_pass) == 0)))
            return d;
    struct smtpc_dest *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->pool = p;
    hamr_strlcpy(d->host, dv->host, sizeof(d->host));
    d->port = dv->port;
    d->policy = dv->policy;
    d->requiretls = requiretls;
    hamr_strlcpy(d->verify_host, dv->verify_host, sizeof(d->verify_host));
    if (auth) {
        d->auth = true;
        hamr_strlcpy(d->auth_user, dv->auth_user, sizeof(d->auth_user));
        hamr_strlcpy(d->auth_pass, dv->auth_pass, sizeof(d->auth_pass));
    }
    if (dv->group != NULL && (d->group = smtpc_group_get(p, dv->group)) == NULL) {
        smtpc_dest_free(d);
        return NULL;
    }
    if (!smtpc_dest_set_patterns(d, dv)) {
        smtpc_dest_free(d);
        return NULL;
    }
    d->next = p->dests;
    p->dests = d;
    return d;
}

/* smtpc_pool_deliver - queue m for host:port under policy may. */
int smtpc_pool_deliver(struct smtpc_pool *p,
                       const char *host,
                       uint16_t port,
                       const struct smtpc_msg *m,
                       smtpc_done_cb cb,
                       void *arg)
{
    return smtpc_pool_deliver_tls(p, host, port, SMTPC_TLS_MAY, NULL, m, cb, arg);
}

/* smtpc_pool_deliver_tls - queue m for host:port under policy; cb runs later, exactly once. */
int smtpc_pool_deliver_tls(struct smtpc_pool *p,
                           const char *host,
                           uint16_t port,
                           enum smtpc_tls_policy policy,
                           const char *verify_host,
                           const struct smtpc_msg *m,
                           smtpc_done_cb cb,
                           void *arg)
{
    struct smtpc_delivery dv = {
        .host = host, .port = port, .policy = policy, .verify_host = verify_host};
    return smtpc_pool_deliver_to(p, &dv, m, cb, arg);
}

/* smtpc_pool_deliver_to - queue m for dv's next hop; cb runs later, exactly once. */
int smtpc_pool_deliver_to(struct smtpc_pool *p,
                          const struct smtpc_delivery *dv_in,
                          const struct smtpc_msg *m,
                          smtpc_done_cb cb,
                          void *arg)
{
    if (p->closing)
        return HAMR_ESHUTDOWN;
    struct smtpc_delivery dvc = *dv_in;
    const struct smtpc_delivery *dv = &dvc;
    /* "": each target's host, decided per connection (smtpc_conn_tls_start). */
    if (dvc.verify_host == NULL)
        dvc.verify_host = "";
    const char *host = dvc.host, *verify_host = dvc.verify_host;
    uint16_t port = dvc.port;
    enum smtpc_tls_policy policy = dvc.policy;
    if (host == NULL || (dvc.n_mx_patterns > 0 && dvc.mx_patterns == NULL))
        return HAMR_EINVAL;
    for (size_t i = 0; i < dvc.n_mx_patterns; i++)
        if (!smtpc_host_ok(dvc.mx_patterns[i]))
            return HAMR_EINVAL;
    if (!smtpc_host_ok(host) || (verify_host[0] != '\0' && !smtpc_host_ok(verify_host)) ||
        port == 0 || (unsigned)policy > SMTPC_TLS_DANE_ONLY || m == NULL || cb == NULL ||
        m->n_rcpts == 0 || m->rcpts == NULL ||
        (m->source == NULL && m->body == NULL && m->body_len > 0) ||
        (m->source != NULL && (m->source->read == NULL || m->source->cancel == NULL)) ||
        !smtpc_addr_ok(m->sender))
        return HAMR_EINVAL;
    for (size_t i = 0; i < m->n_rcpts; i++)
        if (!smtpc_addr_ok(m->rcpts[i]) || m->rcpts[i][0] == '\0')
            return HAMR_EINVAL;
    if ((dvc.auth_user == NULL) != (dvc.auth_pass == NULL) ||
        (dvc.auth_user != NULL && (!smtpc_cred_ok(dvc.auth_user, SMTPC_AUTH_USER_MAX) ||
                                   !smtpc_cred_ok(dvc.auth_pass, SMTPC_AUTH_PASS_MAX))))
        return HAMR_EINVAL;

    struct smtpc_job *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return HAMR_ENOMEM;
    job->res = calloc(m->n_rcpts, sizeof(*job->res));
    job->rstate = calloc(m->n_rcpts, sizeof(*job->rstate));
    struct smtpc_dest *d = smtpc_pool_dest(p, dv, m->requiretls);
    if (job->res == NULL || job->rstate == NULL || d == NULL) {
        smtpc_job_free(job);
        return HAMR_ENOMEM; /* an empty new dest is dropped by the next kick */
    }
    job->pool = p;
    job->msg = m;
    job->cb = cb;
    job->arg = arg;
    if (d->group != NULL) {
        job->group = d->group;
        job->group->refs++;
        job->group->n_jobs++;
        job->group->per_conn = dv->group_per_conn; /* the last caller's: a level may change */
        job->group->hold_ms = dv->group_hold_ms;
        smtpc_group_jobs(p, job->group);
    }
    if (d->q_tail != NULL)
        d->q_tail->next = job;
    else
        d->q_head = job;
    d->q_tail = job;
    p->n_active++;
    smtpc_pool_kick(p);
    return 0;
}

/* smtpc_pool_close - fail everything with SMTPC_TEMP "shutdown", free once all is closed. */
void smtpc_pool_close(struct smtpc_pool *p, void (*closed_cb)(void *arg), void *arg)
{
    if (p->closing)
        return;
    p->closing = true;
    p->closed_cb = closed_cb;
    p->closed_arg = arg;
    uv_timer_stop(&p->kick);
    /* Callbacks run below may call smtpc_pool_deliver (refused) but add nothing. */
    for (struct smtpc_dest *d = p->dests; d != NULL; d = d->next) {
        while (d->q_head != NULL) {
            struct smtpc_job *job = d->q_head;
            d->q_head = job->next;
            if (d->q_head == NULL)
                d->q_tail = NULL;
            smtpc_job_decide_rest(job, SMTPC_TEMP, 0, "shutdown");
            smtpc_job_finish(job, NULL);
        }
        while (d->conns != NULL)
            smtpc_conn_fail(d->conns, 0, "shutdown"); /* unlinks the connection */
    }
    uv_close((uv_handle_t *)&p->kick, smtpc_pool_kick_close_cb);
}

/* smtpc_pool_get_stats - the pool's counters. */
void smtpc_pool_get_stats(const struct smtpc_pool *p, struct smtpc_stats *out)
{
    *out = p->stats;
}

/* smtpc_pool_active - deliveries queued or running. */
size_t smtpc_pool_active(const struct smtpc_pool *p)
{
    return p->n_active;
}

/* smtpc_pool_group_conns - group's connections now (0: no such group). */
unsigned smtpc_pool_group_conns(const struct smtpc_pool *p, const char *group)
{
    for (const struct smtpc_group *g = p->groups; g != NULL; g = g->next)
        if (strcmp(g->key, group) == 0)
            return g->n_conns;
    return 0;
}

static const char *const smtpc_tls_policy_names[] = {"may", "encrypt", "verify", "dane",
                                                     "dane-only"};

/* smtpc_tls_policy_name - the policy's config word. */
const char *smtpc_tls_policy_name(enum smtpc_tls_policy policy)
{
    if ((size_t)policy >= HAMR_ARRAY_LEN(smtpc_tls_policy_names))
        return "?";
    return smtpc_tls_policy_names[policy];
}

/* smtpc_tls_policy_parse - a config word to a policy. */
int smtpc_tls_policy_parse(const char *s, enum smtpc_tls_policy *out)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(smtpc_tls_policy_names); i++) {
        size_t n = strlen(smtpc_tls_policy_names[i]);
        if (strlen(s) == n && hamr_strncaseeq(s, smtpc_tls_policy_names[i], n)) {
            *out = (enum smtpc_tls_policy)i;
            return 0;
        }
    }
    return HAMR_EINVAL;
}
