/*
 * hamrctl.c - the operator's command line: sends one ControlRequest to a
 * node's control channel and prints the ControlResponse as text or JSON.
 *
 *   hamrctl [-s SOCKET | -a HOST:PORT | -c CONFIG] [--cert F --key F --ca F]
 *           [--json] [--timeout SECONDS] VERB [ARGS]
 *
 * The node is -s (a Unix socket's path; a value that reads as HOST:PORT and
 * has no '/' is taken as -a, as before the socket existed), -a (TCP), else
 * the -c file's [listen] control_socket (relative ones inside its data_dir)
 * or, with the socket off, its [listen] control; else 127.0.0.1:7100. The
 * socket needs no certificate: its file mode is the access control. TCP
 * uses TLS with the operator certificate of --cert/--key/--ca (or
 * HAMRCTL_CERT/HAMRCTL_KEY/HAMRCTL_CA) when one is given, the clear
 * otherwise; a node that answers a redirect (admin verbs on a follower) is
 * asked at the control address it names, with the same certificate.
 * Arity, queue ids, node ids, addresses and queue filters are checked here,
 * before anything is sent; the node does the work.
 *
 * Exit status: 0 done; 1 the node could not be reached or answered with an
 * error, or the certificate could not be used ("hamrctl: <error>" on
 * stderr); 2 bad usage.
 *
 * Security: everything the node sends back is made printable before it
 * reaches the terminal (text mode) or escaped (JSON mode). Over TLS the node
 * must show a node certificate of the CA given.
 *
 * Owns: the command line, the operator's TLS context and the output. May
 * call: control_client, net/cluster_tls (loading the operator's files),
 * config (host:port parsing, the -c file), pki_status (the cluster TLS line
 * of status), util.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "util/zone.h"

#include "net/cluster_tls.h"
#include "node/config.h"
#include "node/control_client.h"
#include "node/pki_status.h"

#ifndef HAMR_VERSION
#define HAMR_VERSION "unknown"
#endif

#define HAMRCTL_EXIT_OK 0
#define HAMRCTL_EXIT_FAIL 1
#define HAMRCTL_EXIT_USAGE 2
#define HAMRCTL_MAX_TIMEOUT_S 3600
/* The largest page hamrd gives (RELAY_QUEUE_PAGE_MAX, node/relay_internal.h). */
#define HAMRCTL_QUEUE_LIMIT_MAX 10000

/* hamrctl_args - what the arguments of a verb are. */
enum hamrctl_args {
    HAMRCTL_ARGS_NONE,
    HAMRCTL_ARGS_QUEUE_ID, /* one queue id (optional if min_args is 0) */
    HAMRCTL_ARGS_NODE_ID,  /* one node id (optional if min_args is 0) */
    HAMRCTL_ARGS_ADD,      /* node id, IPV4:PORT or [IPV6]:PORT, [--zone ZONE] [--force] */
    HAMRCTL_ARGS_FILTERS, /* --state S, --to DOMAIN, --older-than DURATION, --limit N, --after ID */
};

/* hamrctl_print - render a successful answer to the verb with args as text. */
typedef void (*hamrctl_print)(const Hamr__ControlResponse *resp, char **args, int n_args);

static void hamrctl_print_status(const Hamr__ControlResponse *resp, char **args, int n_args);
static void hamrctl_print_queue(const Hamr__ControlResponse *resp, char **args, int n_args);
static void hamrctl_print_show(const Hamr__ControlResponse *resp, char **args, int n_args);
static void hamrctl_print_message(const Hamr__ControlResponse *resp, char **args, int n_args);
static void hamrctl_print_version(const Hamr__ControlResponse *resp, char **args, int n_args);

struct hamrctl_verb {
    const char *name;
    const char *usage; /* the arguments, for the usage line */
    unsigned min_args, max_args;
    enum hamrctl_args args;
    hamrctl_print print;
    const char *help;
};

static const struct hamrctl_verb hamrctl_verbs[] = {
    {"status", "", 0, 0, HAMRCTL_ARGS_NONE, hamrctl_print_status,
     "members, roles, leader, term, indexes and queue counts"},
    {"queue",
     "[--state all|pending|deferred|active|held] [--to DOMAIN] [--older-than DURATION] "
     "[--limit N] [--after ID]",
     0, 10, HAMRCTL_ARGS_FILTERS, hamrctl_print_queue,
     "list queued messages, a page (1000, at most 10000) at a time"},
    {"show", "ID", 1, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_show,
     "one message: envelope, recipients, headers"},
    {"hold", "ID", 1, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_message, "stop delivering a message"},
    {"release", "ID", 1, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_message, "undo hold"},
    {"delete", "ID", 1, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_message,
     "remove a message without a bounce"},
    {"flush", "[ID]", 0, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_message,
     "retry one message, or all, now"},
    {"bounce", "ID", 1, 1, HAMRCTL_ARGS_QUEUE_ID, hamrctl_print_message,
     "fail pending recipients and send a bounce"},
    {"transfer", "[NODE]", 0, 1, HAMRCTL_ARGS_NODE_ID, hamrctl_print_message,
     "move leadership (to NODE)"},
    {"add", "NODE IP:PORT [--zone ZONE] [--force]", 2, 5, HAMRCTL_ARGS_ADD, hamrctl_print_message,
     "add a node to the cluster (ZONE: its [node] zone; refused if one zone would then hold a "
     "majority of the voters, unless --force)"},
    {"promote", "NODE", 1, 1, HAMRCTL_ARGS_NODE_ID, hamrctl_print_message, "make a node a voter"},
    {"remove", "NODE", 1, 1, HAMRCTL_ARGS_NODE_ID, hamrctl_print_message,
     "remove a node from the cluster"},
    {"drain", "[NODE]", 0, 1, HAMRCTL_ARGS_NODE_ID, hamrctl_print_message,
     "take a node out of service"},
    {"undrain", "[NODE]", 0, 1, HAMRCTL_ARGS_NODE_ID, hamrctl_print_message,
     "put a node back in service"},
    {"version", "", 0, 0, HAMRCTL_ARGS_NONE, hamrctl_print_version,
     "versions of hamrctl and of the node"},
    {"help", "", 0, 0, HAMRCTL_ARGS_NONE, NULL, "this text"},
};

/* The states a node filters on (active: leased for delivery right now). */
static const char *const hamrctl_states[] = {"all", "pending", "deferred", "active", "held"};

/* hamrctl_usage - the full usage text. */
static void hamrctl_usage(FILE *out)
{
    fprintf(out,
            "usage: hamrctl [-s SOCKET | -a HOST:PORT | -c CONFIG] [--cert FILE --key FILE --ca "
            "FILE]\n"
            "               [--json] [--timeout SECONDS] VERB [ARGS]\n\n"
            "  -s SOCKET          the node's control socket (HOST:PORT here means -a)\n"
            "  -a HOST:PORT       the node's TCP control address (default 127.0.0.1:7100)\n"
            "  -c CONFIG          take the control socket (or address) from this hamrd config\n"
            "  --cert FILE        operator certificate for a TCP control port with TLS\n"
            "  --key FILE         its key\n"
            "  --ca FILE          the cluster CA the node's certificate is checked against\n"
            "                     (or HAMRCTL_CERT, HAMRCTL_KEY, HAMRCTL_CA in the environment)\n"
            "  --json             print the answer as JSON\n"
            "  --timeout SECONDS  give up after this long (default %d)\n\nverbs:\n",
            CONTROL_CLIENT_TIMEOUT_MS / 1000);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(hamrctl_verbs); i++) {
        const struct hamrctl_verb *v = &hamrctl_verbs[i];
        fprintf(out, "  %s%s%s\n      %s\n", v->name, v->usage[0] ? " " : "", v->usage, v->help);
    }
}

/* hamrctl_verb_usage - the usage line of one verb, on stderr. Returns 2. */
static int hamrctl_verb_usage(const struct hamrctl_verb *v)
{
    fprintf(stderr, "usage: hamrctl [options] %s%s%s\n", v->name, v->usage[0] ? " " : "", v->usage);
    return HAMRCTL_EXIT_USAGE;
}

/* hamrctl_valid_queue_id - 1..63 of [A-Za-z0-9._-], not starting with '-'. */
static bool hamrctl_valid_queue_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= SMTPD_QUEUE_ID_MAX || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

/* hamrctl_valid_node_id - a decimal number > 0 that fits 64 bits. */
static bool hamrctl_valid_node_id(const char *s)
{
    uint64_t v = 0;
    if (*s == '\0' || strlen(s) > 20)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    return v > 0;
}

/* hamrctl_valid_raft_address - "a.b.c.d:port" or "[v6]:port", the forms raft addresses take. */
static bool hamrctl_valid_raft_address(const char *s)
{
    struct config_hostport hp;
    char norm[CONSENSUS_ADDR_MAX];
    bool v6 = strchr(s, ']') != NULL;
    return config_parse_hostport(s, &hp) == 0 && (s[0] == '[') == v6 &&
           config_ip_address(hp.host, hp.port, norm, sizeof(norm)) == 0 &&
           (strchr(hp.host, ':') != NULL) == v6;
}

/* hamrctl_valid_text - a non-empty filter argument without blanks or control bytes. */
static bool hamrctl_valid_text(const char *s)
{
    if (*s == '\0' || *s == '-')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

/* hamrctl_check_filters - "queue" filters: known names, one well-formed value each. */
static bool hamrctl_check_filters(char **args, int n)
{
    for (int i = 0; i < n; i += 2) {
        const char *name = args[i];
        const char *value = i + 1 < n ? args[i + 1] : NULL;
        if (value == NULL) {
            fprintf(stderr, "hamrctl: %s needs a value\n", name);
            return false;
        }
        bool ok;
        if (strcmp(name, "--state") == 0) {
            ok = false;
            for (size_t j = 0; j < HAMR_ARRAY_LEN(hamrctl_states); j++)
                ok = ok || strcmp(value, hamrctl_states[j]) == 0;
        } else if (strcmp(name, "--to") == 0) {
            ok = hamrctl_valid_text(value);
        } else if (strcmp(name, "--older-than") == 0) {
            uint64_t ms;
            ok = config_parse_duration(value, &ms) == 0;
        } else if (strcmp(name, "--limit") == 0) {
            char *end;
            unsigned long lim = value[0] >= '0' && value[0] <= '9' ? strtoul(value, &end, 10) : 0;
            ok = lim >= 1 && lim <= HAMRCTL_QUEUE_LIMIT_MAX && *end == '\0';
        } else if (strcmp(name, "--after") == 0) {
            ok = hamrctl_valid_queue_id(value);
        } else {
            fprintf(stderr, "hamrctl: unknown queue filter \"%s\"\n", name);
            return false;
        }
        if (!ok) {
            fprintf(stderr, "hamrctl: %s: bad value \"%s\"\n", name, value);
            return false;
        }
    }
    return true;
}

/* hamrctl_check_args - the arguments of verb v. Prints the problem; false if bad. */
static bool hamrctl_check_args(const struct hamrctl_verb *v, char **args, int n)
{
    if ((unsigned)n < v->min_args || (unsigned)n > v->max_args) {
        hamrctl_verb_usage(v);
        return false;
    }
    switch (v->args) {
        case HAMRCTL_ARGS_NONE:
            return true;
        case HAMRCTL_ARGS_FILTERS:
            if (!hamrctl_check_filters(args, n)) {
                hamrctl_verb_usage(v);
                return false;
            }
            return true;
        case HAMRCTL_ARGS_QUEUE_ID:
            if (n == 1 && !hamrctl_valid_queue_id(args[0])) {
                fprintf(stderr, "hamrctl: not a queue id: \"%s\"\n", args[0]);
                return false;
            }
            return true;
        case HAMRCTL_ARGS_NODE_ID:
            if (n == 1 && !hamrctl_valid_node_id(args[0])) {
                fprintf(stderr, "hamrctl: not a node id: \"%s\"\n", args[0]);
                return false;
            }
            return true;
        case HAMRCTL_ARGS_ADD:
            if (!hamrctl_valid_node_id(args[0])) {
                fprintf(stderr, "hamrctl: not a node id: \"%s\"\n", args[0]);
                return false;
            }
            if (!hamrctl_valid_raft_address(args[1])) {
                fprintf(stderr, "hamrctl: not an IPV4:PORT or [IPV6]:PORT address: \"%s\"\n",
                        args[1]);
                return false;
            }
            for (int i = 2; i < n; i++) {
                if (strcmp(args[i], "--force") == 0)
                    continue;
                if (strcmp(args[i], "--zone") == 0 && i + 1 < n) {
                    if (!zone_name_ok(args[++i])) {
                        fprintf(stderr,
                                "hamrctl: --zone: not 1 to %d letters, digits, '.', '_' or '-': "
                                "\"%s\"\n",
                                ZONE_NAME_MAX - 1, args[i]);
                        return false;
                    }
                    continue;
                }
                hamrctl_verb_usage(v);
                return false;
            }
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Text output.                                                             */
/* ------------------------------------------------------------------------ */

/* hamrctl_p - untrusted text made printable (one of four rotating buffers). */
static const char *hamrctl_p(const char *s)
{
    static char bufs[4][1024];
    static unsigned next;
    char *b = bufs[next++ % 4];
    if (s == NULL)
        s = "";
    return log_printable(b, sizeof(bufs[0]), s, strlen(s));
}

/* hamrctl_time - wall-clock ms as local time, mailq-short or full; "-" for 0. */
static const char *hamrctl_time(uint64_t ms, bool full, char *out, size_t outlen)
{
    if (ms == 0) {
        hamr_strlcpy(out, "-", outlen);
        return out;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    size_t n = 0;
    if (localtime_r(&t, &tm) != NULL)
        n = full ? strftime(out, outlen, "%Y-%m-%d %H:%M:%S %z", &tm)
                 : strftime(out, outlen, "%a %b %e %H:%M:%S", &tm);
    if (n == 0)
        snprintf(out, outlen, "%llu", (unsigned long long)ms);
    return out;
}

/* hamrctl_bytes - a byte count in binary units. */
static const char *hamrctl_bytes(uint64_t n, char *out, size_t outlen)
{
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < HAMR_ARRAY_LEN(units)) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, outlen, "%llu bytes", (unsigned long long)n);
    else
        snprintf(out, outlen, "%.1f %s", v, units[u]);
    return out;
}

/*
 * hamrctl_print_zones - "zones:" with the voters per zone, and a warning
 * when one zone holds a majority of them (losing it loses quorum). No line
 * when no voter has a known zone.
 */
static void hamrctl_print_zones(const char *const *zones, size_t n)
{
    char summary[512];
    zone_summary(zones, n, summary, sizeof(summary));
    if (summary[0] == '\0')
        return;
    size_t count;
    const char *major = zone_majority(zones, n, &count);
    printf("zones:       %s (voters)", hamrctl_p(summary));
    if (major != NULL)
        printf("; warning: zone %s holds %zu of %zu voters, losing it loses quorum",
               hamrctl_p(major), count, n);
    printf("\n");
}

/* hamrctl_print_status - the node and cluster block. */
static void hamrctl_print_status(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    (void)args;
    (void)n_args;
    const Hamr__NodeStatus *s = resp->status;
    char b[64];
    if (s == NULL) {
        hamrctl_print_message(resp, args, n_args);
        return;
    }
    printf("node:        %llu (%s)\n", (unsigned long long)s->id, hamrctl_p(s->state));
    if (s->leader_id != 0)
        printf("leader:      %llu at %s\n", (unsigned long long)s->leader_id,
               hamrctl_p(s->leader_address));
    else
        printf("leader:      none known\n");
    printf("term:        %llu\n", (unsigned long long)s->term);
    printf("index:       commit %llu, applied %llu, last %llu\n",
           (unsigned long long)s->commit_index, (unsigned long long)s->applied_index,
           (unsigned long long)s->last_index);
    /* The zone goes last, and only when known, so the fields before it stay where they were. */
    const char *zones[64];
    size_t n_voters = 0;
    for (size_t i = 0; i < s->n_members; i++) {
        const Hamr__MemberStatus *m = s->members[i];
        bool zoned = m->zone != NULL && m->zone[0] != '\0';
        printf("%-13s%llu %s %s%s%s%s%s\n", i == 0 ? "members:" : "", (unsigned long long)m->id,
               hamrctl_p(m->address), hamrctl_p(m->role), m->id == s->leader_id ? " (leader)" : "",
               m->draining ? " (draining)" : "", zoned ? " zone " : "",
               zoned ? hamrctl_p(m->zone) : "");
        if (m->role != NULL && strcmp(m->role, "voter") == 0 && n_voters < HAMR_ARRAY_LEN(zones))
            zones[n_voters++] = zoned ? m->zone : "";
    }
    hamrctl_print_zones(zones, n_voters);
    printf(
        "queue:       %llu messages (%llu held), %llu recipients pending, %llu leased, "
        "%s\n",
        (unsigned long long)s->queue_messages, (unsigned long long)s->queue_held,
        (unsigned long long)s->queue_rcpts_pending, (unsigned long long)s->queue_rcpts_leased,
        hamrctl_bytes(s->queue_bytes, b, sizeof(b)));
    if (s->body_store) {
        printf("bodies:      %s on disk in %llu segment%s",
               hamrctl_bytes(s->body_store_bytes, b, sizeof(b)),
               (unsigned long long)s->body_store_segments, s->body_store_segments == 1 ? "" : "s");
        if (s->bodies_missing > 0)
            printf(", %llu missing (fetching from peers)", (unsigned long long)s->bodies_missing);
        printf("\n");
    }
    if (s->sts_policies > 0)
        printf("mta-sts:     %llu polic%s cached (replicated)\n",
               (unsigned long long)s->sts_policies, s->sts_policies == 1 ? "y" : "ies");
    if (s->queue_digest != NULL && s->queue_digest[0] != '\0')
        printf("digest:      %s\n", hamrctl_p(s->queue_digest));
    else
        printf(
            "digest:      not computed (more than 100000 messages queued: it would hold up the "
            "node)\n");
    printf("free space:  %s\n", hamrctl_bytes(s->free_bytes, b, sizeof(b)));
    printf("draining:    %s\n", s->draining ? "yes" : "no");
    printf("zone:        %s\n",
           s->zone != NULL && s->zone[0] != '\0' ? hamrctl_p(s->zone) : "none");
    if (s->cluster_level >= 6) {
        /* Format 6: every node delivers under the cluster time (relay_spread.c). */
        if (!s->clock_known)
            printf("clock:       cluster time not known yet\n");
        else
            printf("clock:       %+.3f s from the cluster time%s\n",
                   (double)s->clock_skew_ms / 1000.0,
                   s->clock_skewed ? " (skewed: past [node] max_clock_skew)" : "");
        printf("delivery:    %llu running here, %llu stopped (lease ran out), %llu leases lapsed\n",
               (unsigned long long)s->deliveries_running, (unsigned long long)s->deliveries_stopped,
               (unsigned long long)s->lease_lapses);
        for (size_t i = 0; i < s->n_delivery_members; i++) {
            const Hamr__DeliveryMember *d = s->delivery_members[i];
            printf(
                "%-13s%llu: %u running of %u slots, %llu leased, heard %.1f s ago, clock "
                "%+.3f s%s%s\n",
                i == 0 ? "deliverers:" : "", (unsigned long long)d->id, d->deliveries, d->slots,
                (unsigned long long)d->leased, (double)d->heard_ms / 1000.0,
                (double)d->skew_ms / 1000.0, d->bodies_missing ? ", lacks bodies" : "",
                d->usable ? "" : " (gets no lease)");
        }
    }
    /* A node older than the field sends none: no line rather than a guess. */
    if (s->cluster_tls != NULL) {
        char tls[256];
        printf("cluster tls: %s\n", pki_status_describe(s->cluster_tls, tls, sizeof(tls)));
    }
    if (s->version != NULL && s->version[0] != '\0')
        printf("version:     %s (cluster feature level %u)\n", hamrctl_p(s->version),
               s->cluster_level);
}

/* hamrctl_print_rcpt_line - a recipient, its state and attempts, then its last error. */
static void hamrctl_print_rcpt_line(const Hamr__QueueRcpt *r, int indent)
{
    printf("%*s%s  %s", indent, "", hamrctl_p(r->addr), hamrctl_p(r->state));
    if (r->attempts > 0)
        printf(", %u attempt%s", r->attempts, r->attempts == 1 ? "" : "s");
    printf("\n");
    if (r->last_error != NULL && r->last_error[0] != '\0')
        printf("%*s  (%s)\n", indent, "", hamrctl_p(r->last_error));
}

/*
 * hamrctl_print_more - when the node stopped before the end of the queue,
 * the command that lists the next page: the same filters and --limit, and
 * --after the id the node named in place of any given.
 */
static void hamrctl_print_more(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    if (resp->next_after == NULL || resp->next_after[0] == '\0')
        return;
    printf("(more: hamrctl queue");
    for (int i = 0; i + 1 < n_args; i += 2)
        if (strcmp(args[i], "--after") != 0)
            printf(" %s %s", hamrctl_p(args[i]), hamrctl_p(args[i + 1]));
    printf(" --after %s)\n", hamrctl_p(resp->next_after));
}

/* hamrctl_print_queue - a mailq-like table with a total line. */
static void hamrctl_print_queue(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    if (resp->n_entries == 0) {
        /* With next_after, the node stopped at its scan bound before finding a match. */
        bool more = resp->next_after != NULL && resp->next_after[0] != '\0';
        printf("%s\n",
               more ? "No matching message in this part of the queue" : "Mail queue is empty");
        hamrctl_print_more(resp, args, n_args);
        return;
    }
    uint64_t total = 0;
    char when[64];
    printf("%-24s %9s %-20s  %s\n", "-Queue ID-", "-Size-", "----Arrival Time----",
           "-Sender/Recipient-");
    for (size_t i = 0; i < resp->n_entries; i++) {
        const Hamr__QueueEntry *e = resp->entries[i];
        char id[80];
        snprintf(id, sizeof(id), "%s%s", hamrctl_p(e->queue_id), e->held ? "!" : "");
        printf("%-24s %9llu %-20s  %s\n", id, (unsigned long long)e->size,
               hamrctl_time(e->received_at_ms, false, when, sizeof(when)),
               e->sender && e->sender[0] ? hamrctl_p(e->sender) : "<>");
        for (size_t j = 0; j < e->n_rcpts; j++)
            hamrctl_print_rcpt_line(e->rcpts[j], 57);
        total += e->size;
        printf("\n");
    }
    printf("-- %llu Kbytes in %zu message%s.\n", (unsigned long long)((total + 1023) / 1024),
           resp->n_entries, resp->n_entries == 1 ? "" : "s");
    hamrctl_print_more(resp, args, n_args);
}

/* hamrctl_print_headers - the header block, one printable line each, indented. */
static void hamrctl_print_headers(const char *h)
{
    while (h != NULL && *h != '\0') {
        const char *end = strchr(h, '\n');
        size_t n = end ? (size_t)(end - h) : strlen(h);
        if (n > 0 && h[n - 1] == '\r')
            n--;
        char line[1024];
        printf("  %s\n", log_printable(line, sizeof(line), h, n));
        h = end ? end + 1 : NULL;
    }
}

/* hamrctl_print_show - one message in detail. */
static void hamrctl_print_show(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    (void)args;
    (void)n_args;
    char t[64];
    for (size_t i = 0; i < resp->n_entries; i++) {
        const Hamr__QueueEntry *e = resp->entries[i];
        printf("queue id:    %s%s\n", hamrctl_p(e->queue_id), e->held ? " (held)" : "");
        printf("size:        %llu\n", (unsigned long long)e->size);
        printf("arrival:     %s\n", hamrctl_time(e->received_at_ms, true, t, sizeof(t)));
        printf("expires:     %s\n", hamrctl_time(e->expires_at_ms, true, t, sizeof(t)));
        printf("client:      %s (helo %s)\n", hamrctl_p(e->client_addr), hamrctl_p(e->helo));
        printf("sender:      <%s>%s\n", hamrctl_p(e->sender),
               e->is_dsn ? " (delivery status notification)" : "");
        if (e->extensions != NULL && e->extensions[0] != '\0')
            printf("extensions:  %s\n", hamrctl_p(e->extensions));
        printf("recipients:\n");
        for (size_t j = 0; j < e->n_rcpts; j++) {
            const Hamr__QueueRcpt *r = e->rcpts[j];
            printf("  %s\n", hamrctl_p(r->addr));
            printf("    state: %s, attempts: %u, next attempt: %s\n", hamrctl_p(r->state),
                   r->attempts, hamrctl_time(r->next_attempt_ms, true, t, sizeof(t)));
            if (r->dsn != NULL && r->dsn[0] != '\0')
                printf("    dsn: %s\n", hamrctl_p(r->dsn));
            if (r->last_error != NULL && r->last_error[0] != '\0')
                printf("    last error: %s\n", hamrctl_p(r->last_error));
            /* The last attempt's TLS policy, then the TLS it got or why none. */
            if (r->tls_policy != NULL && r->tls_policy[0] != '\0')
                printf("    tls: %s %s\n", hamrctl_p(r->tls_policy),
                       r->tls != NULL && r->tls[0] != '\0' ? hamrctl_p(r->tls) : "unknown");
        }
        printf("headers:\n");
        hamrctl_print_headers(e->headers);
    }
    if (resp->n_entries == 0)
        hamrctl_print_message(resp, args, n_args);
}

/* hamrctl_print_message - the free-text result, if any. */
static void hamrctl_print_message(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    (void)args;
    (void)n_args;
    if (resp->message != NULL && resp->message[0] != '\0')
        printf("%s\n", hamrctl_p(resp->message));
}

/* hamrctl_print_version - ours, then the node's ("hamrd X.Y.Z" in the message). */
static void hamrctl_print_version(const Hamr__ControlResponse *resp, char **args, int n_args)
{
    (void)args;
    (void)n_args;
    printf("hamrctl %s\n", HAMR_VERSION);
    if (resp->message != NULL && resp->message[0] != '\0')
        printf("%s\n", hamrctl_p(resp->message));
    else if (resp->status != NULL && resp->status->version != NULL)
        printf("hamrd %s\n", hamrctl_p(resp->status->version));
    else
        printf("hamrd version unknown\n");
}

/* ------------------------------------------------------------------------ */
/* main.                                                                    */
/* ------------------------------------------------------------------------ */

/* hamrctl_options - what the command line said. */
struct hamrctl_options {
    const char *socket; /* -s */
    const char *addr;   /* -a */
    const char *config; /* -c */
    const char *cert, *key, *ca;
    bool json;
    unsigned timeout_ms;
};

/* hamrctl_target - where the request goes: a Unix socket, or a TCP address. */
struct hamrctl_target {
    bool is_unix;
    char path[4096];
    struct config_hostport hp;
};

/* hamrctl_from_config - the -c file's control socket, else its TCP address. */
static bool hamrctl_from_config(const char *path, struct hamrctl_target *t)
{
    struct hamr_config *cfg = malloc(sizeof(*cfg));
    char err[1024];
    if (cfg == NULL || config_load(cfg, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "hamrctl: %s\n", cfg ? err : "out of memory");
        free(cfg);
        return false;
    }
    bool ok = true;
    if (cfg->listen_control_socket[0] != '\0') {
        t->is_unix = true;
        if (config_control_socket(cfg, t->path, sizeof(t->path)) != 0) {
            fprintf(stderr, "hamrctl: %s: control_socket: path too long\n", path);
            ok = false;
        }
    } else {
        t->hp = cfg->listen_control;
    }
    config_free(cfg);
    free(cfg);
    if (!t->is_unix) {
        /* A node listening on every address is reached on loopback. */
        if (strcmp(t->hp.host, "0.0.0.0") == 0)
            hamr_strlcpy(t->hp.host, "127.0.0.1", sizeof(t->hp.host));
        else if (strcmp(t->hp.host, "::") == 0)
            hamr_strlcpy(t->hp.host, "::1", sizeof(t->hp.host));
    }
    return ok;
}

/* hamrctl_server - pick the node to ask; false with a message if the choice is bad. */
static bool hamrctl_server(const struct hamrctl_options *o, struct hamrctl_target *t)
{
    memset(t, 0, sizeof(*t));
    if (o->socket != NULL) {
        /* "-s HOST:PORT" meant TCP before there was a socket; a path with a '/' never does. */
        if (strchr(o->socket, '/') != NULL || config_parse_hostport(o->socket, &t->hp) != 0) {
            t->is_unix = true;
            hamr_strlcpy(t->path, o->socket, sizeof(t->path));
        }
        return true;
    }
    if (o->addr != NULL) {
        if (config_parse_hostport(o->addr, &t->hp) != 0) {
            fprintf(stderr, "hamrctl: -a: not HOST:PORT: \"%s\"\n", o->addr);
            return false;
        }
        return true;
    }
    if (o->config != NULL)
        return hamrctl_from_config(o->config, t);
    hamr_strlcpy(t->hp.host, "127.0.0.1", sizeof(t->hp.host));
    t->hp.port = 7100;
    return true;
}

/* hamrctl_parse_timeout - whole seconds, 1..HAMRCTL_MAX_TIMEOUT_S. */
static bool hamrctl_parse_timeout(const char *s, unsigned *ms)
{
    unsigned v = 0;
    if (*s == '\0' || strlen(s) > 4)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (unsigned)(*s - '0');
    }
    if (v == 0 || v > HAMRCTL_MAX_TIMEOUT_S)
        return false;
    *ms = v * 1000;
    return true;
}

/* hamrctl_parse_options - options before the verb; returns argv index of the verb or -1. */
static int hamrctl_parse_options(int argc, char **argv, struct hamrctl_options *o)
{
    static const char *const valued[] = {"-s", "-a", "-c", "--timeout", "--cert", "--key", "--ca"};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            hamrctl_usage(stdout);
            exit(HAMRCTL_EXIT_OK);
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        size_t k = 0;
        while (k < HAMR_ARRAY_LEN(valued) && strcmp(a, valued[k]) != 0)
            k++;
        if (k == HAMR_ARRAY_LEN(valued)) {
            fprintf(stderr, "hamrctl: unknown option \"%s\" (see hamrctl help)\n", a);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "hamrctl: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        const char **slots[] = {&o->socket, &o->addr, &o->config, NULL, &o->cert, &o->key, &o->ca};
        if (slots[k] != NULL) {
            *slots[k] = v;
        } else if (!hamrctl_parse_timeout(v, &o->timeout_ms)) {
            fprintf(stderr, "hamrctl: --timeout: not 1..%d seconds: \"%s\"\n",
                    HAMRCTL_MAX_TIMEOUT_S, v);
            return -1;
        }
    }
    if ((o->socket != NULL) + (o->addr != NULL) + (o->config != NULL) > 1) {
        fprintf(stderr, "hamrctl: give one of -s, -a and -c\n");
        return -1;
    }
    /* The environment stands in for flags not given. */
    const char *env_cert = getenv("HAMRCTL_CERT");
    const char *env_key = getenv("HAMRCTL_KEY");
    const char *env_ca = getenv("HAMRCTL_CA");
    if (o->cert == NULL && env_cert != NULL && env_cert[0] != '\0')
        o->cert = env_cert;
    if (o->key == NULL && env_key != NULL && env_key[0] != '\0')
        o->key = env_key;
    if (o->ca == NULL && env_ca != NULL && env_ca[0] != '\0')
        o->ca = env_ca;
    int n_tls = (o->cert != NULL) + (o->key != NULL) + (o->ca != NULL);
    if (n_tls != 0 && n_tls != 3) {
        fprintf(stderr,
                "hamrctl: --cert, --key and --ca (or HAMRCTL_CERT, HAMRCTL_KEY, HAMRCTL_CA) go "
                "together\n");
        return -1;
    }
    return i;
}

/* hamrctl_tls - the operator's TLS context, made at the first TCP connection. */
struct hamrctl_tls {
    struct cluster_tls *ct;
    bool failed;
};

/*
 * hamrctl_tls_ctx - the client context for TCP: NULL with no certificate
 * given (plaintext) or when loading failed (*failed, after a message).
 */
static SSL_CTX *hamrctl_tls_ctx(const struct hamrctl_options *o, struct hamrctl_tls *ht)
{
    if (o->cert == NULL || ht->failed)
        return NULL;
    if (ht->ct == NULL) {
        struct cluster_tls_files files = {.ca = o->ca, .cert = o->cert, .key = o->key};
        char err[1024];
        if (cluster_tls_new(&files, &ht->ct, err, sizeof(err)) != 0) {
            fprintf(stderr, "hamrctl: %s\n", err);
            ht->failed = true;
            return NULL;
        }
        const struct cluster_tls_identity *self = cluster_tls_self(ht->ct);
        if (self->role != CLUSTER_TLS_OPERATOR) {
            fprintf(stderr,
                    "hamrctl: %s is node %llu's certificate; a control port takes an operator's "
                    "(deploy/make-pki.sh DIR operator NAME)\n",
                    o->cert, (unsigned long long)self->node_id);
            ht->failed = true;
            return NULL;
        }
    }
    return cluster_tls_client_ctx(ht->ct);
}

/*
 * hamrctl_call - one request to t: connect (TLS on TCP when a certificate
 * is given), call, close. false after a message (prefix before it).
 */
static bool hamrctl_call(const struct hamrctl_options *o,
                         struct hamrctl_tls *ht,
                         const struct hamrctl_target *t,
                         const char *prefix,
                         const Hamr__ControlRequest *req,
                         Hamr__ControlResponse **resp)
{
    char err[768];
    struct control_client cc;
    int rv;
    if (t->is_unix) {
        rv = control_client_open_unix(&cc, t->path, o->timeout_ms, err, sizeof(err));
    } else {
        SSL_CTX *ctx = hamrctl_tls_ctx(o, ht);
        if (ht->failed)
            return false;
        rv = control_client_open(&cc, t->hp.host, t->hp.port, o->timeout_ms, err, sizeof(err));
        if (rv == 0 && ctx != NULL)
            rv = control_client_start_tls(&cc, ctx, err, sizeof(err));
    }
    if (rv == 0)
        rv = control_client_call(&cc, req, resp, err, sizeof(err));
    control_client_close(&cc);
    if (rv != 0)
        fprintf(stderr, "hamrctl: %s%s\n", prefix, err);
    return rv == 0;
}

/*
 * hamrctl_parse_control - a control address a node published: "[v6]:port"
 * or "v4:port", and the unbracketed "v6:port" older nodes published.
 */
static bool hamrctl_parse_control(const char *s, struct config_hostport *hp)
{
    if (config_parse_hostport(s, hp) == 0)
        return true;
    const char *colon = strrchr(s, ':');
    unsigned char a6[16];
    if (colon == NULL || (size_t)(colon - s) >= sizeof(hp->host))
        return false;
    char host[CONFIG_HOST_MAX];
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char bracketed[CONFIG_HOST_MAX + 16];
    snprintf(bracketed, sizeof(bracketed), "[%s]%s", host, colon);
    return inet_pton(AF_INET6, host, a6) == 1 && config_parse_hostport(bracketed, hp) == 0;
}

/*
 * hamrctl_request - send req to t and take the response; transfer and
 * membership run on the leader: a follower names it, and it is asked once,
 * over TCP with the same certificate. false (after a message) if no
 * response came.
 */
static bool hamrctl_request(const struct hamrctl_options *o,
                            const struct hamrctl_target *t,
                            const Hamr__ControlRequest *req,
                            Hamr__ControlResponse **resp)
{
    struct hamrctl_tls ht = {0};
    bool ok = hamrctl_call(o, &ht, t, "", req, resp);
    const char *lc = ok ? (*resp)->leader_control : NULL;
    if (ok && (*resp)->code == HAMR_ENOTLEADER && lc != NULL && lc[0] != '\0') {
        struct hamrctl_target leader = {0};
        if (hamrctl_parse_control(lc, &leader.hp) && (t->is_unix || leader.hp.port != t->hp.port ||
                                                      strcmp(leader.hp.host, t->hp.host) != 0)) {
            hamr__control_response__free_unpacked(*resp, NULL);
            *resp = NULL;
            ok = hamrctl_call(o, &ht, &leader, "leader: ", req, resp);
        }
    }
    cluster_tls_free(ht.ct);
    return ok;
}

/* main - options, verb and arguments, one call, output; see the exit codes above. */
int main(int argc, char **argv)
{
    struct hamrctl_options o = {.timeout_ms = CONTROL_CLIENT_TIMEOUT_MS};
    int vi = hamrctl_parse_options(argc, argv, &o);
    if (vi < 0)
        return HAMRCTL_EXIT_USAGE;
    if (vi >= argc) {
        hamrctl_usage(stderr);
        return HAMRCTL_EXIT_USAGE;
    }
    const struct hamrctl_verb *v = NULL;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(hamrctl_verbs); i++)
        if (strcmp(argv[vi], hamrctl_verbs[i].name) == 0)
            v = &hamrctl_verbs[i];
    if (v == NULL) {
        char q[128];
        fprintf(stderr, "hamrctl: unknown command \"%s\" (see hamrctl help)\n",
                log_printable(q, sizeof(q), argv[vi], strlen(argv[vi])));
        return HAMRCTL_EXIT_USAGE;
    }
    /* --json may also follow the verb (hamrctl status --json); no verb takes it as an argument. */
    char **args = argv + vi + 1;
    int n_args = 0;
    for (int i = vi + 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            o.json = true;
        else
            args[n_args++] = argv[i];
    }
    if (!hamrctl_check_args(v, args, n_args))
        return HAMRCTL_EXIT_USAGE;
    if (strcmp(v->name, "help") == 0) {
        hamrctl_usage(stdout);
        return HAMRCTL_EXIT_OK;
    }

    struct hamrctl_target target;
    if (!hamrctl_server(&o, &target))
        return o.config == NULL ? HAMRCTL_EXIT_USAGE : HAMRCTL_EXIT_FAIL;

    Hamr__ControlRequest req = HAMR__CONTROL_REQUEST__INIT;
    req.verb = (char *)v->name;
    req.args = args;
    req.n_args = (size_t)n_args;
    Hamr__ControlResponse *resp = NULL;
    if (!hamrctl_request(&o, &target, &req, &resp))
        return HAMRCTL_EXIT_FAIL;
    int rc = HAMRCTL_EXIT_OK;
    if (resp->code != 0) {
        const char *text = resp->error && resp->error[0] ? resp->error : hamr_strerror(resp->code);
        fprintf(stderr, "hamrctl: %s\n", hamrctl_p(text));
        rc = HAMRCTL_EXIT_FAIL;
    } else if (o.json) {
        if (control_client_json(stdout, &resp->base) != 0)
            rc = HAMRCTL_EXIT_FAIL;
    } else {
        v->print(resp, args, n_args);
    }
    hamr__control_response__free_unpacked(resp, NULL);
    if (fflush(stdout) != 0)
        rc = HAMRCTL_EXIT_FAIL;
    return rc;
}
