/*
 * countsink.c - a counting SMTP sink for the hamr benchmark.
 *
 *   countsink -l HOST:PORT -o STATUS_FILE [-t SECONDS] [-c MAX_SESSIONS]
 *
 * Accepts every SMTP transaction (EHLO advertises PIPELINING, SIZE and
 * 8BITMIME), throws the message away and counts it when it answers 250 to
 * the final dot. It keeps no mail, so the figures measure the relay under
 * test and not the sink's disk.
 *
 * STATUS_FILE is rewritten atomically (temporary file and rename) at most
 * every 50 ms while something changed, and at exit:
 *   messages=N recipients=N bytes=N sessions=N first=EPOCH last=EPOCH
 * where first and last are the CLOCK_REALTIME seconds (microsecond
 * precision) of the first and the latest 250 to a final dot, and bytes
 * counts DATA octets including line ends. "countsink listening on
 * HOST:PORT" goes to stderr once the socket listens.
 *
 * Bounds: at most -c sessions (default 200; more are answered 421), a
 * command line of at most 1000 octets, replies buffered per session at most
 * COUNTSINK_OUT_MAX (a client that stops reading is dropped), and the
 * process exits by itself after -t seconds (default 3600), or on SIGTERM or
 * SIGINT. Security: parses untrusted input, which it never echoes; meant
 * for 127.0.0.1 only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define COUNTSINK_LINE_MAX 1000
#define COUNTSINK_IN_MAX 65536
#define COUNTSINK_OUT_MAX 4096
#define COUNTSINK_MAX_SESSIONS 10000

/* Per-connection states: commands, or inside DATA at a line start or mid-line. */
enum countsink_state {
    COUNTSINK_CMD,      /* reading command lines */
    COUNTSINK_DATA_BOL, /* inside DATA at the start of a line */
    COUNTSINK_DATA_MID, /* inside DATA in the middle of a line */
    COUNTSINK_QUIT,     /* 221 queued; close once it is written */
};

struct countsink_conn {
    int fd;
    enum countsink_state state;
    int rcpts;
    char in[COUNTSINK_IN_MAX];
    size_t in_len;
    char out[COUNTSINK_OUT_MAX];
    size_t out_len;
};

struct countsink {
    int listen_fd;
    const char *status_path;
    int max_sessions;
    struct countsink_conn **conns;
    int nconns;
    unsigned long long messages, recipients, bytes, sessions;
    double first, last;
    bool dirty;
    double written_at;
};

static volatile sig_atomic_t countsink_stop;

/* countsink_on_signal - ask the main loop to stop. */
static void countsink_on_signal(int sig)
{
    (void)sig;
    countsink_stop = 1;
}

/* countsink_mono - CLOCK_MONOTONIC in seconds. */
static double countsink_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* countsink_real - CLOCK_REALTIME in seconds. */
static double countsink_real(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* countsink_write_status - rewrite the status file atomically; 0 or -1. */
static int countsink_write_status(struct countsink *k)
{
    char tmp[4096];
    FILE *f;
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp", k->status_path);

    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -1;
    f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "messages=%llu recipients=%llu bytes=%llu sessions=%llu first=%.6f last=%.6f\n",
            k->messages, k->recipients, k->bytes, k->sessions, k->first, k->last);
    if (fclose(f) != 0 || rename(tmp, k->status_path) != 0)
        return -1;
    k->dirty = false;
    k->written_at = countsink_mono();
    return 0;
}

/* countsink_reply - queue a reply; false if the output buffer is full. */
static bool countsink_reply(struct countsink_conn *c, const char *text)
{
    size_t n = strlen(text);

    if (c->out_len + n > sizeof(c->out))
        return false;
    memcpy(c->out + c->out_len, text, n);
    c->out_len += n;
    return true;
}

/* countsink_is - true if line (without CRLF) starts with command word cmd, any case. */
static bool countsink_is(const char *line, size_t len, const char *cmd)
{
    size_t n = strlen(cmd);

    return len >= n && strncasecmp(line, cmd, n) == 0 &&
           (len == n || line[n] == ' ' || line[n] == ':');
}

/* countsink_command - answer one command line; false to drop the connection. */
static bool countsink_command(struct countsink *k,
                              struct countsink_conn *c,
                              const char *line,
                              size_t len)
{
    if (countsink_is(line, len, "EHLO"))
        return countsink_reply(c,
                               "250-countsink\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n"
                               "250 8BITMIME\r\n");
    if (countsink_is(line, len, "HELO"))
        return countsink_reply(c, "250 countsink\r\n");
    if (countsink_is(line, len, "MAIL")) {
        c->rcpts = 0;
        return countsink_reply(c, "250 2.1.0 Ok\r\n");
    }
    if (countsink_is(line, len, "RCPT")) {
        c->rcpts++;
        return countsink_reply(c, "250 2.1.5 Ok\r\n");
    }
    if (countsink_is(line, len, "DATA")) {
        if (c->rcpts == 0)
            return countsink_reply(c, "503 5.5.1 No recipients\r\n");
        c->state = COUNTSINK_DATA_BOL;
        return countsink_reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
    }
    if (countsink_is(line, len, "RSET") || countsink_is(line, len, "NOOP")) {
        c->rcpts = 0;
        return countsink_reply(c, "250 2.0.0 Ok\r\n");
    }
    if (countsink_is(line, len, "QUIT")) {
        c->state = COUNTSINK_QUIT;
        return countsink_reply(c, "221 2.0.0 Bye\r\n");
    }
    (void)k;
    return countsink_reply(c, "502 5.5.2 Not implemented\r\n");
}

/* countsink_message_done - the final dot arrived: count the message and answer 250. */
static bool countsink_message_done(struct countsink *k, struct countsink_conn *c)
{
    double now = countsink_real();

    k->messages++;
    k->recipients += (unsigned long long)c->rcpts;
    if (k->first == 0)
        k->first = now;
    k->last = now;
    k->dirty = true;
    c->rcpts = 0;
    c->state = COUNTSINK_CMD;
    return countsink_reply(c, "250 2.0.0 Ok: counted\r\n");
}

/*
 * countsink_consume - work through the input buffer. In DATA, whole lines
 * are skipped and only a line of exactly "." ends the message; a line
 * longer than the buffer is dropped in pieces (state DATA_MID remembers
 * that the next piece is not a line start). Returns false to drop the
 * connection.
 */
static bool countsink_consume(struct countsink *k, struct countsink_conn *c)
{
    size_t pos = 0;

    while (pos < c->in_len && c->state != COUNTSINK_QUIT) {
        char *p = c->in + pos;
        size_t avail = c->in_len - pos;
        char *nl = memchr(p, '\n', avail);
        size_t len;

        if (c->state == COUNTSINK_CMD) {
            if (nl == NULL) {
                if (avail > COUNTSINK_LINE_MAX)
                    return false;
                break;
            }
            len = (size_t)(nl - p);
            pos += len + 1;
            if (len > 0 && p[len - 1] == '\r')
                len--;
            if (!countsink_command(k, c, p, len))
                return false;
            continue;
        }
        if (nl == NULL) {
            /* A partial line: keep it unless the buffer is full. */
            if (pos == 0 && avail == sizeof(c->in)) {
                k->bytes += avail;
                pos += avail;
                c->state = COUNTSINK_DATA_MID;
            }
            break;
        }
        len = (size_t)(nl - p);
        pos += len + 1;
        k->bytes += len + 1;
        if (c->state == COUNTSINK_DATA_BOL && len == 2 && p[0] == '.' && p[1] == '\r') {
            if (!countsink_message_done(k, c))
                return false;
            continue;
        }
        c->state = COUNTSINK_DATA_BOL;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return true;
}

/* countsink_flush - write queued replies; false if the connection broke. */
static bool countsink_flush(struct countsink_conn *c)
{
    while (c->out_len > 0) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return true;
}

/* countsink_drop - close and free connection i (swapped with the last). */
static void countsink_drop(struct countsink *k, int i)
{
    close(k->conns[i]->fd);
    free(k->conns[i]);
    k->conns[i] = k->conns[--k->nconns];
}

/* countsink_accept - accept every pending connection; over the limit they get 421. */
static void countsink_accept(struct countsink *k)
{
    for (;;) {
        struct countsink_conn *c;
        int fd = accept4(k->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0)
            return;
        if (k->nconns >= k->max_sessions) {
            static const char busy[] = "421 4.7.0 countsink: too many sessions\r\n";
            ssize_t ignored = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL);
            (void)ignored;
            close(fd);
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->state = COUNTSINK_CMD;
        countsink_reply(c, "220 countsink ESMTP\r\n");
        k->conns[k->nconns++] = c;
        k->sessions++;
        k->dirty = true;
    }
}

/* countsink_on_events - read, answer and write for connection i; false to drop it. */
static bool countsink_on_events(struct countsink *k, struct countsink_conn *c, short ev)
{
    if (ev & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return false;
        if (n > 0) {
            c->in_len += (size_t)n;
            if (!countsink_consume(k, c))
                return false;
        }
    }
    if (!countsink_flush(c))
        return false;
    return !(c->state == COUNTSINK_QUIT && c->out_len == 0);
}

/* countsink_listen - bind and listen on "A.B.C.D:PORT"; the socket or -1. */
static int countsink_listen(const char *addr)
{
    struct sockaddr_in sa;
    char host[64];
    const char *colon = strrchr(addr, ':');
    int fd, one = 1;
    long port;

    if (colon == NULL || (size_t)(colon - addr) >= sizeof(host))
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    port = strtol(colon + 1, NULL, 10);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 512) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    struct countsink k;
    struct pollfd *pfd;
    const char *listen_addr = NULL;
    double lifetime = 3600, deadline;
    int opt, i;

    memset(&k, 0, sizeof(k));
    k.max_sessions = 200;
    while ((opt = getopt(argc, argv, "l:o:t:c:")) != -1) {
        switch (opt) {
            case 'l':
                listen_addr = optarg;
                break;
            case 'o':
                k.status_path = optarg;
                break;
            case 't':
                lifetime = strtod(optarg, NULL);
                break;
            case 'c':
                k.max_sessions = (int)strtol(optarg, NULL, 10);
                break;
            default:
                listen_addr = NULL;
                optind = argc;
                break;
        }
    }
    if (listen_addr == NULL || k.status_path == NULL || !(lifetime > 0) || k.max_sessions < 1 ||
        k.max_sessions > COUNTSINK_MAX_SESSIONS) {
        fprintf(stderr,
                "usage: countsink -l HOST:PORT -o STATUS_FILE [-t SECONDS] "
                "[-c MAX_SESSIONS]\n");
        return 2;
    }
    k.listen_fd = countsink_listen(listen_addr);
    if (k.listen_fd < 0) {
        fprintf(stderr, "countsink: cannot listen on %s: %s\n", listen_addr, strerror(errno));
        return 1;
    }
    k.conns = calloc((size_t)k.max_sessions, sizeof(*k.conns));
    pfd = calloc((size_t)k.max_sessions + 1, sizeof(*pfd));
    if (k.conns == NULL || pfd == NULL || countsink_write_status(&k) != 0) {
        fprintf(stderr, "countsink: cannot start (memory or status file %s)\n", k.status_path);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, countsink_on_signal);
    signal(SIGINT, countsink_on_signal);
    fprintf(stderr, "countsink listening on %s\n", listen_addr);
    deadline = countsink_mono() + lifetime;
    while (!countsink_stop && countsink_mono() < deadline) {
        int n = k.nconns;
        pfd[0].fd = k.listen_fd;
        pfd[0].events = POLLIN;
        for (i = 0; i < n; i++) {
            pfd[i + 1].fd = k.conns[i]->fd;
            pfd[i + 1].events = POLLIN | (k.conns[i]->out_len > 0 ? POLLOUT : 0);
            pfd[i + 1].revents = 0;
        }
        if (poll(pfd, (nfds_t)n + 1, 50) < 0 && errno != EINTR)
            break;
        /* Walk backwards: countsink_drop moves the last connection into slot i. */
        for (i = n - 1; i >= 0; i--)
            if (pfd[i + 1].revents != 0 && !countsink_on_events(&k, k.conns[i], pfd[i + 1].revents))
                countsink_drop(&k, i);
        if (pfd[0].revents & POLLIN)
            countsink_accept(&k);
        if (k.dirty && countsink_mono() - k.written_at >= 0.05)
            countsink_write_status(&k);
    }
    countsink_write_status(&k);
    while (k.nconns > 0)
        countsink_drop(&k, k.nconns - 1);
    close(k.listen_fd);
    free(k.conns);
    free(pfd);
    return 0;
}
