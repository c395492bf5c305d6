/*
 * smtpload.c - SMTP load generator for the hamr benchmark.
 *
 *   smtpload -s HOST:PORT [-s HOST:PORT ...] [-c SESSIONS] [-m MESSAGES]
 *            [-z SIZE] [-P] [-t SECONDS] [-f FROM] [-r RCPT] [-l FILE] [-v]
 *
 * Opens SESSIONS SMTP sessions (session i talks to server i mod the number
 * of -s options), says EHLO once per session and then sends MAIL, RCPT,
 * DATA and a SIZE-byte message (headers included, before dot-stuffing,
 * which the generated text never needs) until MESSAGES messages have been
 * handed out over all sessions. With -P the MAIL/RCPT/DATA group is sent
 * in one write (RFC 2920 3.1: DATA is the last command of a group).
 *
 * Acceptance latency is the time from the moment the last byte of the
 * final "." CRLF was written to the socket to the moment the complete
 * reply to it arrived. Only 250 counts as accepted; every other reply to
 * MAIL, RCPT, DATA or the final dot counts the message as non-250, and a
 * message lost with its connection counts as failed. Messages are not
 * retried. A session whose connection breaks reconnects, at most
 * SMTPLOAD_MAX_RECONNECTS times in the whole run, each after
 * SMTPLOAD_RECONNECT_DELAY.
 *
 * Output: one summary line on stdout, key=value:
 *   smtpload sessions= messages= size= ok= non250= failed= unsent=
 *            start= end= seconds= accept_rate= lat_p50_ms= lat_p99_ms=
 *            lat_max_ms= status=ok|timeout|incomplete
 * start and end are CLOCK_REALTIME seconds (first MAIL written, last reply
 * read), so a caller can compare them with a sink's clock. With -l FILE,
 * each accepted message's dot time, latency and server go to FILE (to see
 * whether slow replies come in bursts). With -v, the
 * first few non-250 replies are printed on stderr.
 *
 * Bounds: the whole run ends after -t seconds (default 600): every session
 * is closed and unsent messages are reported. Reply lines and buffered
 * replies are limited to SMTPLOAD_IN_MAX bytes per session.
 * Exit status: 0 if every message got a 250, 1 otherwise, 2 on bad usage.
 * Security: talks only to the servers named; server replies are printed
 * escaped and truncated.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SMTPLOAD_MAX_SERVERS 16
#define SMTPLOAD_MAX_SESSIONS 1000
#define SMTPLOAD_MAX_MESSAGES 10000000
#define SMTPLOAD_MIN_SIZE 512
#define SMTPLOAD_MAX_SIZE (64 * 1024 * 1024)
#define SMTPLOAD_IN_MAX 8192
#define SMTPLOAD_CMD_MAX 1024
#define SMTPLOAD_MAX_RECONNECTS 100
#define SMTPLOAD_MAX_SHOWN 10
#define SMTPLOAD_RECONNECT_DELAY 0.1 /* seconds */

/*
 * Session states. A session only moves forward through one transaction
 * (MAIL -> RCPT -> DATA -> BODY -> DOT) and returns to IDLE after the reply
 * to the final dot; any broken connection goes to CLOSED, from where it
 * reconnects if messages and reconnects are left.
 */
enum smtpload_state {
    SMTPLOAD_CONNECTING, /* non-blocking connect in progress */
    SMTPLOAD_GREETING,   /* waiting for 220 */
    SMTPLOAD_EHLO,       /* EHLO sent, waiting for 250 */
    SMTPLOAD_IDLE,       /* ready for the next message */
    SMTPLOAD_MAIL,       /* MAIL sent (with -P: MAIL, RCPT and DATA) */
    SMTPLOAD_RCPT,       /* RCPT sent */
    SMTPLOAD_DATA,       /* DATA sent, waiting for 354 */
    SMTPLOAD_BODY,       /* writing the message and the final dot */
    SMTPLOAD_DOT,        /* final dot written, waiting for the reply */
    SMTPLOAD_RSET,       /* RSET after a refused MAIL/RCPT/DATA */
    SMTPLOAD_QUIT,       /* QUIT sent, waiting for 221 or close */
    SMTPLOAD_CLOSED,     /* no connection */
    SMTPLOAD_DONE,       /* finished for good */
};

struct smtpload_opts {
    struct sockaddr_in servers[SMTPLOAD_MAX_SERVERS];
    int nservers;
    int sessions;
    long messages;
    size_t size;
    bool pipelining;
    double timeout;
    const char *from;
    const char *rcpt;
    bool verbose;
    const char *lat_file; /* -l: one line per accepted message */
};

struct smtpload_session {
    int id;
    int fd;
    enum smtpload_state state;
    const struct sockaddr_in *server;
    /* Replies: bytes read but not yet parsed. */
    char in[SMTPLOAD_IN_MAX];
    size_t in_len;
    /* Pending output: either cmd (commands) or msg (the message). */
    char cmd[SMTPLOAD_CMD_MAX];
    const char *out;
    size_t out_len;
    size_t out_off;
    /* The message text: headers (rewritten per message), body, ".\r\n". */
    char *msg;
    size_t msg_len;
    size_t msg_id_off; /* where the fixed-width message number goes */
    bool has_msg;      /* a message is claimed and not yet counted */
    bool msg_refused;  /* with -P: MAIL or RCPT already refused */
    int replies_left;  /* with -P: replies still due for the group */
    double dot_at;     /* monotonic time the final dot was written */
    bool connected_once;
    double retry_at; /* monotonic time before which CLOSED does not reconnect */
};

struct smtpload_run {
    struct smtpload_opts opts;
    struct smtpload_session *sess;
    long next_msg;
    long ok;
    long non250;
    long failed;
    int reconnects;
    int shown;
    double *lat;    /* acceptance latencies in ms, one per accepted message */
    double *lat_at; /* with -l: when each final dot was written, s after the start */
    int *lat_srv;   /* with -l: the server index each message went to */
    double start_real;
    double start_mono;
    double end_mono;
    bool started;
};

/* smtpload_now - CLOCK_MONOTONIC in seconds. */
static double smtpload_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* smtpload_real - CLOCK_REALTIME in seconds. */
static double smtpload_real(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* smtpload_usage - print usage on stderr and exit 2. */
static void smtpload_usage(const char *why)
{
    if (why != NULL)
        fprintf(stderr, "smtpload: %s\n", why);
    fprintf(stderr,
            "usage: smtpload -s HOST:PORT [-s HOST:PORT ...] [-c SESSIONS] [-m MESSAGES]\n"
            "                [-z SIZE] [-P] [-t SECONDS] [-f FROM] [-r RCPT] [-l FILE] [-v]\n"
            "  -s  server (IPv4 literal), repeat to spread sessions round robin\n"
            "  -c  concurrent sessions (default 20, at most %d)\n"
            "  -m  messages in total (default 1000)\n"
            "  -z  message size in bytes, suffix K or M allowed (default 4K)\n"
            "  -P  send MAIL, RCPT and DATA as one pipelined group\n"
            "  -t  give up after this many seconds (default 600)\n"
            "  -l  write each accepted message's dot time, latency (ms) and server to FILE\n"
            "  -f  envelope sender (default bench@example.org)\n"
            "  -r  recipient (default sink@example.com)\n"
            "  -v  print the first non-250 replies on stderr\n",
            SMTPLOAD_MAX_SESSIONS);
    exit(2);
}

/* smtpload_parse_size - "4096", "4K", "1M" into bytes; -1 if malformed. */
static long smtpload_parse_size(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (end == s || v < 0)
        return -1;
    if (*end == 'K' || *end == 'k')
        v *= 1024, end++;
    else if (*end == 'M' || *end == 'm')
        v *= 1024 * 1024, end++;
    return *end == '\0' ? v : -1;
}

/* smtpload_parse_addr - "A.B.C.D:PORT" into sa; -1 if malformed. */
static int smtpload_parse_addr(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    char *end;
    long port;

    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

/* smtpload_parse_args - fill o from argv; exits through smtpload_usage on errors. */
static void smtpload_parse_args(int argc, char **argv, struct smtpload_opts *o)
{
    int c;
    long v;

    memset(o, 0, sizeof(*o));
    o->sessions = 20;
    o->messages = 1000;
    o->size = 4096;
    o->timeout = 600;
    o->from = "bench@example.org";
    o->rcpt = "sink@example.com";
    while ((c = getopt(argc, argv, "s:c:m:z:Pt:f:r:l:vh")) != -1) {
        switch (c) {
            case 's':
                if (o->nservers == SMTPLOAD_MAX_SERVERS)
                    smtpload_usage("too many -s");
                if (smtpload_parse_addr(optarg, &o->servers[o->nservers]) != 0)
                    smtpload_usage("bad -s, want IPv4:PORT");
                o->nservers++;
                break;
            case 'c':
                v = strtol(optarg, NULL, 10);
                if (v < 1 || v > SMTPLOAD_MAX_SESSIONS)
                    smtpload_usage("bad -c");
                o->sessions = (int)v;
                break;
            case 'm':
                v = strtol(optarg, NULL, 10);
                if (v < 1 || v > SMTPLOAD_MAX_MESSAGES)
                    smtpload_usage("bad -m");
                o->messages = v;
                break;
            case 'z':
                v = smtpload_parse_size(optarg);
                if (v < SMTPLOAD_MIN_SIZE || v > SMTPLOAD_MAX_SIZE)
                    smtpload_usage("bad -z (512 bytes to 64M)");
                o->size = (size_t)v;
                break;
            case 'P':
                o->pipelining = true;
                break;
            case 't':
                o->timeout = strtod(optarg, NULL);
                if (!(o->timeout > 0 && o->timeout <= 86400))
                    smtpload_usage("bad -t");
                break;
            case 'f':
                o->from = optarg;
                break;
            case 'r':
                o->rcpt = optarg;
                break;
            case 'v':
                o->verbose = true;
                break;
            case 'l':
                o->lat_file = optarg;
                break;
            default:
                smtpload_usage(NULL);
        }
    }
    if (o->nservers == 0)
        smtpload_usage("need at least one -s");
    if (strlen(o->from) > 200 || strlen(o->rcpt) > 200 || strpbrk(o->from, "\r\n<>") ||
        strpbrk(o->rcpt, "\r\n<>"))
        smtpload_usage("bad -f or -r");
}

/*
 * smtpload_build_msg - the message text for one session: a header block
 * with a fixed-width message number (so rewriting it keeps the length), a
 * body of lines of at most 76 letters that never start with ".", and the
 * final dot. The text before the final dot is exactly o->size bytes and
 * ends with CRLF.
 */
static int smtpload_build_msg(const struct smtpload_opts *o, struct smtpload_session *s)
{
    static const char mid[] = "Message-ID: <bench.";
    char hdr[1024];
    int n;
    size_t pos, left, len, i;

    n = snprintf(hdr, sizeof(hdr),
                 "From: <%s>\r\nTo: <%s>\r\nSubject: hamr benchmark message\r\n"
                 "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
                 "%s%04d.%010ld@bench.example.org>\r\n"
                 "X-Bench-Size: %zu\r\n\r\n",
                 o->from, o->rcpt, mid, s->id, 0L, o->size);
    if (n < 0 || (size_t)n >= sizeof(hdr) || (size_t)n + 2 > o->size)
        return -1;
    s->msg_len = o->size + 3;
    s->msg = malloc(s->msg_len);
    if (s->msg == NULL)
        return -1;
    memcpy(s->msg, hdr, (size_t)n);
    s->msg_id_off = (size_t)(strstr(hdr, mid) - hdr) + sizeof(mid) - 1 + 5;
    pos = (size_t)n;
    left = o->size - pos;
    /* Full lines while more than one line is left; never leave 1 byte. */
    while (left > 78) {
        len = left - 78 == 1 ? 75 : 76;
        for (i = 0; i < len; i++)
            s->msg[pos + i] = (char)('a' + (pos + i) % 26);
        memcpy(s->msg + pos + len, "\r\n", 2);
        pos += len + 2;
        left -= len + 2;
    }
    for (i = 0; i + 2 < left; i++)
        s->msg[pos + i] = (char)('a' + (pos + i) % 26);
    memcpy(s->msg + pos + left - 2, "\r\n", 2);
    memcpy(s->msg + o->size, ".\r\n", 3);
    return 0;
}

/* smtpload_set_msg_number - write message number k into the session's Message-ID. */
static void smtpload_set_msg_number(struct smtpload_session *s, long k)
{
    char num[16];

    snprintf(num, sizeof(num), "%010ld", k % 10000000000L);
    memcpy(s->msg + s->msg_id_off, num, 10);
}

/* smtpload_show - print one server reply escaped and truncated, if -v and under the cap. */
static void smtpload_show(struct smtpload_run *r,
                          const struct smtpload_session *s,
                          const char *what,
                          const char *line,
                          size_t len)
{
    char esc[160];
    size_t i, j = 0;

    if (!r->opts.verbose || r->shown >= SMTPLOAD_MAX_SHOWN)
        return;
    r->shown++;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    for (i = 0; i < len && i < 100 && j + 5 < sizeof(esc); i++) {
        unsigned char ch = (unsigned char)line[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '"')
            esc[j++] = (char)ch;
        else
            j += (size_t)snprintf(esc + j, sizeof(esc) - j, "\\x%02x", ch);
    }
    esc[j] = '\0';
    fprintf(stderr, "smtpload: session=%d after=%s reply=\"%s\"\n", s->id, what, esc);
}

/* smtpload_send - queue len bytes at p (borrowed until written) for the session. */
static void smtpload_send(struct smtpload_session *s, const char *p, size_t len)
{
    s->out = p;
    s->out_len = len;
    s->out_off = 0;
}

/* smtpload_send_cmd - format one or more command lines into the session buffer and queue them. */
static void smtpload_send_cmd(struct smtpload_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void smtpload_send_cmd(struct smtpload_session *s, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(s->cmd, sizeof(s->cmd), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(s->cmd))
        n = 0; /* cannot happen: -f and -r are at most 200 bytes */
    smtpload_send(s, s->cmd, (size_t)n);
}

/* smtpload_msg_done - the current message ended; count it once. */
static void smtpload_msg_done(struct smtpload_run *r,
                              struct smtpload_session *s,
                              bool ok,
                              bool replied)
{
    double now = smtpload_now();

    if (!s->has_msg)
        return;
    s->has_msg = false;
    if (ok) {
        if (r->lat_at != NULL) {
            r->lat_at[r->ok] = s->dot_at - r->start_mono;
            r->lat_srv[r->ok] = (int)(s->server - r->opts.servers);
        }
        r->lat[r->ok++] = (now - s->dot_at) * 1000.0;
    } else if (replied) {
        r->non250++;
    } else {
        r->failed++;
    }
    r->end_mono = now;
}

/* smtpload_close - drop the connection; a claimed message counts as failed. */
static void smtpload_close(struct smtpload_run *r, struct smtpload_session *s)
{
    smtpload_msg_done(r, s, false, false);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->in_len = 0;
    s->out = NULL;
    s->out_len = s->out_off = 0;
    s->state = s->state == SMTPLOAD_QUIT ? SMTPLOAD_DONE : SMTPLOAD_CLOSED;
    s->retry_at = smtpload_now() + SMTPLOAD_RECONNECT_DELAY;
}

/* smtpload_next - start the next message, or QUIT when none is left. */
static void smtpload_next(struct smtpload_run *r, struct smtpload_session *s)
{
    const struct smtpload_opts *o = &r->opts;

    if (r->next_msg >= o->messages) {
        smtpload_send_cmd(s, "QUIT\r\n");
        s->state = SMTPLOAD_QUIT;
        return;
    }
    smtpload_set_msg_number(s, r->next_msg++);
    if (!r->started) {
        r->started = true;
        r->start_real = smtpload_real();
        r->start_mono = smtpload_now();
    }
    s->has_msg = true;
    s->msg_refused = false;
    if (o->pipelining)
        smtpload_send_cmd(s, "MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", o->from, o->rcpt);
    else
        smtpload_send_cmd(s, "MAIL FROM:<%s>\r\n", o->from);
    s->state = SMTPLOAD_MAIL;
}

/* smtpload_refused - a non-250 reply inside a transaction: count it, then RSET. */
static void smtpload_refused(struct smtpload_run *r, struct smtpload_session *s)
{
    smtpload_msg_done(r, s, false, true);
    smtpload_send_cmd(s, "RSET\r\n");
    s->state = SMTPLOAD_RSET;
}

/* smtpload_on_reply - one complete reply (its last line) arrived in the current state. */
static void smtpload_on_reply(struct smtpload_run *r,
                              struct smtpload_session *s,
                              int code,
                              const char *line,
                              size_t len)
{
    static const char *names[] = {"connect", "greeting", "EHLO", "idle", "MAIL",   "RCPT", "DATA",
                                  "body",    "dot",      "RSET", "QUIT", "closed", "done"};
    bool pipe = r->opts.pipelining;

    int want = s->state == SMTPLOAD_GREETING ? 220 : s->state == SMTPLOAD_DATA ? 354 : 250;

    if (code != want && s->state != SMTPLOAD_QUIT)
        smtpload_show(r, s, names[s->state], line, len);
    if (code == 421 && s->state != SMTPLOAD_QUIT) {
        smtpload_msg_done(r, s, false, true);
        smtpload_close(r, s);
        return;
    }
    switch (s->state) {
        case SMTPLOAD_GREETING:
            if (code != 220) {
                smtpload_close(r, s);
                return;
            }
            smtpload_send_cmd(s, "EHLO bench.example.org\r\n");
            s->state = SMTPLOAD_EHLO;
            break;
        case SMTPLOAD_EHLO:
            if (code != 250) {
                smtpload_close(r, s);
                return;
            }
            s->state = SMTPLOAD_IDLE;
            smtpload_next(r, s);
            break;
        case SMTPLOAD_MAIL:
        case SMTPLOAD_RCPT:
            if (code != 250) {
                if (!pipe) {
                    smtpload_refused(r, s);
                    return;
                }
                /* The rest of the group is still answered (RFC 2920 3.1). */
                s->msg_refused = true;
            } else if (!pipe) {
                if (s->state == SMTPLOAD_MAIL)
                    smtpload_send_cmd(s, "RCPT TO:<%s>\r\n", r->opts.rcpt);
                else
                    smtpload_send_cmd(s, "DATA\r\n");
            }
            s->state = s->state == SMTPLOAD_MAIL ? SMTPLOAD_RCPT : SMTPLOAD_DATA;
            break;
        case SMTPLOAD_DATA:
            if (code != 354) {
                smtpload_refused(r, s);
                return;
            }
            /* A 354 after a refused MAIL or RCPT still needs a body and a dot. */
            smtpload_send(s, s->msg, s->msg_len);
            s->state = SMTPLOAD_BODY;
            break;
        case SMTPLOAD_DOT:
            if (s->msg_refused)
                smtpload_msg_done(r, s, false, true);
            else
                smtpload_msg_done(r, s, code == 250, true);
            s->state = SMTPLOAD_IDLE;
            smtpload_next(r, s);
            break;
        case SMTPLOAD_RSET:
            s->state = SMTPLOAD_IDLE;
            smtpload_next(r, s);
            break;
        case SMTPLOAD_QUIT:
            smtpload_close(r, s);
            break;
        default:
            /* A reply nobody asked for (e.g. while the body is being written). */
            smtpload_msg_done(r, s, false, true);
            smtpload_close(r, s);
            break;
    }
}

/*
 * smtpload_parse - work through every complete reply in the input buffer.
 * Continuation lines ("250-...") are skipped; the last line ("250 ...")
 * completes the reply. Returns -1 on a malformed or over-long reply.
 */
static int smtpload_parse(struct smtpload_run *r, struct smtpload_session *s)
{
    size_t start = 0;

    while (s->fd >= 0) {
        char *nl = memchr(s->in + start, '\n', s->in_len - start);
        char *line = s->in + start;
        size_t len;

        if (nl == NULL)
            break;
        len = (size_t)(nl - line);
        start += len + 1;
        if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
            line[2] < '0' || line[2] > '9')
            return -1;
        if (len > 3 && line[3] == '-')
            continue;
        if (len > 3 && line[3] != ' ' && line[3] != '\r')
            return -1;
        smtpload_on_reply(r, s, (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'),
                          line, len);
    }
    if (s->fd < 0)
        return 0;
    memmove(s->in, s->in + start, s->in_len - start);
    s->in_len -= start;
    if (s->in_len == sizeof(s->in))
        return -1;
    return 0;
}

/* smtpload_flush - write pending output; returns -1 if the connection broke. */
static int smtpload_flush(struct smtpload_session *s)
{
    while (s->out_off < s->out_len) {
        ssize_t n = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        s->out_off += (size_t)n;
    }
    if (s->state == SMTPLOAD_BODY) {
        s->dot_at = smtpload_now();
        s->state = SMTPLOAD_DOT;
    }
    return 0;
}

/* smtpload_connect - open a non-blocking connection for the session. */
static void smtpload_connect(struct smtpload_run *r, struct smtpload_session *s)
{
    int one = 1;

    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        s->state = SMTPLOAD_CLOSED;
        return;
    }
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->in_len = 0;
    if (connect(s->fd, (const struct sockaddr *)s->server, sizeof(*s->server)) == 0) {
        s->state = SMTPLOAD_GREETING;
    } else if (errno == EINPROGRESS) {
        s->state = SMTPLOAD_CONNECTING;
    } else {
        smtpload_close(r, s);
    }
}

/* smtpload_on_events - handle poll events for one session. */
static void smtpload_on_events(struct smtpload_run *r, struct smtpload_session *s, short ev)
{
    if (s->state == SMTPLOAD_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof(err);
        if (!(ev & (POLLOUT | POLLERR | POLLHUP)))
            return;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
            smtpload_close(r, s);
            return;
        }
        s->state = SMTPLOAD_GREETING;
        return;
    }
    if ((ev & POLLOUT) && smtpload_flush(s) != 0) {
        smtpload_close(r, s);
        return;
    }
    if (ev & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = recv(s->fd, s->in + s->in_len, sizeof(s->in) - s->in_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            smtpload_close(r, s);
            return;
        }
        if (n > 0)
            s->in_len += (size_t)n;
    }
    if (smtpload_parse(r, s) != 0) {
        smtpload_show(r, s, "parse", s->in, s->in_len);
        smtpload_close(r, s);
        return;
    }
    /* New output from the replies just handled: try to write it now. */
    if (s->fd >= 0 && s->out_off < s->out_len && smtpload_flush(s) != 0)
        smtpload_close(r, s);
}

/* smtpload_cmp - qsort order for doubles. */
/*
 * smtpload_write_lat - -l FILE: "SECONDS LATENCY_MS SERVER" per accepted
 * message, in the order the replies came (SECONDS: when its final dot was
 * written, after the first MAIL; SERVER: the index of its -s option).
 */
static int smtpload_write_lat(const char *path, const struct smtpload_run *r)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    for (long i = 0; i < r->ok; i++)
        fprintf(f, "%.6f %.3f %d\n", r->lat_at[i], r->lat[i], r->lat_srv[i]);
    return fclose(f) == 0 ? 0 : -1;
}

static int smtpload_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y ? 1 : 0;
}

/* smtpload_pct - the p-th percentile (nearest rank) of n sorted values. */
static double smtpload_pct(const double *v, long n, double p)
{
    long k;

    if (n == 0)
        return 0;
    k = (long)((p / 100.0) * (double)n + 0.999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return v[k];
}

/* smtpload_loop - run every session until all are done or the deadline passes; 0 or -1. */
static int smtpload_loop(struct smtpload_run *r)
{
    const struct smtpload_opts *o = &r->opts;
    struct pollfd *pfd = calloc((size_t)o->sessions, sizeof(*pfd));
    int *who = calloc((size_t)o->sessions, sizeof(*who));
    double deadline = smtpload_now() + o->timeout;
    int i, n, rc = 0;

    if (pfd == NULL || who == NULL) {
        free(pfd);
        free(who);
        return -1;
    }
    for (;;) {
        int waiting = 0;
        double now = smtpload_now();

        for (i = 0, n = 0; i < o->sessions; i++) {
            struct smtpload_session *s = &r->sess[i];
            if (s->state == SMTPLOAD_CLOSED && now < s->retry_at && r->next_msg < o->messages) {
                waiting++;
                continue;
            }
            if (s->state == SMTPLOAD_CLOSED) {
                if (r->next_msg < o->messages && r->reconnects < SMTPLOAD_MAX_RECONNECTS) {
                    if (s->connected_once)
                        r->reconnects++;
                    s->connected_once = true;
                    smtpload_connect(r, s);
                } else {
                    s->state = SMTPLOAD_DONE;
                }
            }
            if (s->fd < 0)
                continue;
            pfd[n].fd = s->fd;
            pfd[n].events = POLLIN;
            if (s->state == SMTPLOAD_CONNECTING || s->out_off < s->out_len)
                pfd[n].events |= POLLOUT;
            pfd[n].revents = 0;
            who[n++] = i;
        }
        if (n == 0 && waiting == 0)
            break;
        if (now > deadline) {
            rc = -1;
            break;
        }
        if (poll(pfd, (nfds_t)n, 100) < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        for (i = 0; i < n; i++)
            if (pfd[i].revents != 0)
                smtpload_on_events(r, &r->sess[who[i]], pfd[i].revents);
    }
    for (i = 0; i < o->sessions; i++)
        if (r->sess[i].fd >= 0)
            smtpload_close(r, &r->sess[i]);
    free(pfd);
    free(who);
    return rc;
}

int main(int argc, char **argv)
{
    struct smtpload_run run;
    struct smtpload_opts *o = &run.opts;
    double seconds;
    long unsent;
    int i, rc;

    memset(&run, 0, sizeof(run));
    smtpload_parse_args(argc, argv, o);
    if ((double)o->size * o->sessions > 1024.0 * 1024 * 1024)
        smtpload_usage("sessions x size over 1G of message buffers");
    signal(SIGPIPE, SIG_IGN);
    run.lat = calloc((size_t)o->messages, sizeof(double));
    run.sess = calloc((size_t)o->sessions, sizeof(*run.sess));
    if (o->lat_file != NULL) {
        run.lat_at = calloc((size_t)o->messages, sizeof(double));
        run.lat_srv = calloc((size_t)o->messages, sizeof(int));
    }
    if (run.lat == NULL || run.sess == NULL ||
        (o->lat_file != NULL && (run.lat_at == NULL || run.lat_srv == NULL))) {
        fprintf(stderr, "smtpload: out of memory\n");
        return 1;
    }
    for (i = 0; i < o->sessions; i++) {
        struct smtpload_session *s = &run.sess[i];
        s->id = i;
        s->fd = -1;
        s->state = SMTPLOAD_CLOSED;
        s->server = &o->servers[i % o->nservers];
        if (smtpload_build_msg(o, s) != 0) {
            fprintf(stderr, "smtpload: cannot build a %zu-byte message\n", o->size);
            return 1;
        }
    }
    rc = smtpload_loop(&run);
    unsent = o->messages - run.next_msg;
    seconds = run.started ? run.end_mono - run.start_mono : 0;
    if (seconds < 0)
        seconds = 0;
    if (o->lat_file != NULL && smtpload_write_lat(o->lat_file, &run) != 0)
        fprintf(stderr, "smtpload: cannot write %s\n", o->lat_file);
    qsort(run.lat, (size_t)run.ok, sizeof(double), smtpload_cmp);
    printf(
        "smtpload sessions=%d servers=%d messages=%ld size=%zu pipelining=%s ok=%ld "
        "non250=%ld failed=%ld unsent=%ld reconnects=%d start=%.6f end=%.6f seconds=%.3f "
        "accept_rate=%.1f lat_p50_ms=%.2f lat_p99_ms=%.2f lat_max_ms=%.2f status=%s\n",
        o->sessions, o->nservers, o->messages, o->size, o->pipelining ? "yes" : "no", run.ok,
        run.non250, run.failed, unsent, run.reconnects, run.start_real, run.start_real + seconds,
        seconds, seconds > 0 ? (double)run.ok / seconds : 0.0, smtpload_pct(run.lat, run.ok, 50),
        smtpload_pct(run.lat, run.ok, 99), run.ok > 0 ? run.lat[run.ok - 1] : 0.0,
        rc != 0      ? "timeout"
        : unsent > 0 ? "incomplete"
                     : "ok");
    for (i = 0; i < o->sessions; i++)
        free(run.sess[i].msg);
    free(run.sess);
    free(run.lat);
    free(run.lat_at);
    free(run.lat_srv);
    return run.ok == o->messages ? 0 : 1;
}
