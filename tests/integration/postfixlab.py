"""postfixlab.py - a real, receiving Postfix for the integration tests (Debian's postfix).

PostfixLab runs one private Postfix instance, started and stopped by the
test, on 127.0.0.1 and a free port. It shares nothing with a system Postfix
but the installed programs: its own config directory (main.cf, master.cf,
the mailbox map), queue directory, data directory, mailboxes and log, all
under one directory (ENV.dir/NAME, or a temporary directory of its own,
removed by close(), when no harness Env is given).

What it does:
- final delivery: every recipient at the test domain (default pf.test) is
  delivered by Postfix's virtual(8) agent to a maildir under mail/DOMAIN/:
  USER/ for the users listed, catchall/ for any other address (unless
  catchall=False: then an unlisted recipient gets 550 5.1.1 at RCPT). The
  files are written by uid/gid nobody. delivered() and
  wait_delivered(test id or predicate, count, timeout) read them byte-exact
  as Delivered objects: what virtual(8) wrote (LF line ends), i.e. the
  message with Return-Path:, X-Original-To:, Delivered-To: and Postfix's
  Received: prepended;
- switches: smtputf8=False sets smtputf8_enable = no and discards the
  keyword (EHLO shows no SMTPUTF8; "MAIL ... SMTPUTF8" gets 555 5.5.4);
  dsn=False discards the DSN keyword (EHLO shows no DSN; Postfix then
  answers NOTIFY, ORCPT, RET and ENVID with 501 5.7.1 "DSN support is
  disabled");
- Postfix's own mail (its DSN success, delay and failure notices, notices
  to the postmaster) and anything relayed to a domain other than the test
  domain goes to relayhost [relayhost_host]:relayhost_port (e.g. a
  harness.Sink); without one, such mail stays deferred in the queue;
- its log: maillog_file = DIR/maillog through the postlog service;
  log_text() and log_tail() read it, and every failure here quotes it;
- stop(): "postfix -c CONF stop", a bounded wait for the master to go,
  then SIGKILL to any process left of this instance only (a process whose
  environment holds MAIL_CONFIG=this CONF directory: Postfix hands it to
  every daemon the master starts). An atexit hook stops an instance a test
  forgot, and a guard process per instance (this file run with --guard, in
  a session of its own) stops it when the test process dies without
  stopping it (SIGKILL, a ctest timeout): it waits for EOF on a pipe from
  the test process.

Gotchas (Postfix 3.7 on Debian 12, run as root):
- It must run as root (the master binds the port and starts the daemons
  as mail_owner); as another user the lab skips the test.
- "postfix -c DIR" is accepted by root for any DIR; alternate_config_directories
  in the default main.cf (there is none here: the system Postfix is left
  unconfigured) matters only to the set-gid postdrop/postqueue, i.e.
  sendmail and mailq, which the lab does not use. Never run
  "postfix -c DIR set-permissions" or "upgrade-configuration": they act on
  the shared install through meta_directory (/etc/postfix/postfix-files).
- "postfix start" runs "postfix-script check-fatal", whose post-install
  create-missing makes the queue directories and data_directory with the
  right owners. Do not make data_directory beforehand: a root-owned one is
  left as it is, and the master then cannot create master.lock in it.
- maillog_file must start with one of maillog_file_prefixes (set to the
  lab directory), and master.cf must have the postlog unix-dgram service,
  or check-fatal stops the start.
- Every service runs with chroot = n: Debian's master.cf chroots smtpd and
  friends into the queue directory, which would need copies of /etc files.
- Mail from 127.0.0.1 counts as local for header rewriting by default
  (local_header_rewrite_clients = permit_inet_interfaces): cleanup would add
  Date:, Message-ID: and From: and qualify addresses. The lab empties it so
  that only Received: and the three delivery headers are added.
- mydestination and alias_maps are empty: nothing is delivered by local(8)
  and no /etc/aliases is needed; myhostname is fixed (pf-lab.test) so the
  machine's host name does not matter.
- The master daemonises (its own session): it is not a child of the test,
  hence the explicit stop and the atexit hook. "postfix stop" returns as
  soon as the master has released its lock; its children die a moment
  later, so the lab waits for them (bounded) and kills what is left. Its
  orphans are reaped by PID 1 (for a while they show as zombies).
- The master binds the smtpd port itself; should the free port have been
  taken meanwhile, "postfix start" fails (after about 2 s) with "bind ...
  Address already in use" in the maillog, and the lab tries again on
  another port (three tries). A start that fails otherwise stops what
  started and raises with the log.
- Retry timers are short (1 s queue runs and backoff) so that a relayhost
  that starts late, or a deferral, costs seconds, not Postfix's minutes.
- smtplib itself refuses mail(..., ["SMTPUTF8"]) when the server did not
  advertise it; use docmd() to see what Postfix answers.
"""

import atexit
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

import harness
from harness import wait_for

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

# Every service this lab's Postfix needs; chroot (5th column) is off everywhere.
MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_RUNNING = []  # labs started and not yet stopped, stopped at exit


@atexit.register
def _stop_all():
    for lab in list(_RUNNING):
        try:
            lab.stop()
        except Exception:
            pass


def instance_pids(conf_dir):
    """instance_pids - pids of live processes whose environment has MAIL_CONFIG=conf_dir.

    "postfix -c DIR" exports MAIL_CONFIG=DIR, and the master hands it on to
    every daemon it starts: this finds one instance's processes and no other's.
    """
    marker = b"MAIL_CONFIG=" + conf_dir.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/stat" % entry, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in env and state not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


def postfix_cmd(conf_dir, log_path, args, timeout=60):
    """postfix_cmd - postfix -c CONF_DIR ARGS, output appended to log_path; the exit status."""
    with open(log_path, "ab") as log:
        log.write(("=== %s postfix %s\n" % (time.strftime("%H:%M:%S"), " ".join(args))).encode())
        log.flush()
        return subprocess.run([POSTFIX, "-c", conf_dir] + list(args), stdin=subprocess.DEVNULL,
                              stdout=log, stderr=log, timeout=timeout).returncode


def reap(conf_dir, log_path, timeout=15):
    """reap - stop the instance of conf_dir: postfix stop, a bounded wait, SIGKILL to the rest.

    Returns the pids that had to be killed.
    """
    if instance_pids(conf_dir):
        try:
            postfix_cmd(conf_dir, log_path, ["stop"], timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        wait_for(lambda: not instance_pids(conf_dir), timeout,
                 "the processes of Postfix %s to exit" % conf_dir, interval=0.1)
        return []
    except harness.WaitTimeout:
        left = instance_pids(conf_dir)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not instance_pids(conf_dir), 10,
                 "the processes of Postfix %s to die of SIGKILL" % conf_dir, interval=0.1)
        return left


class Delivered:
    """Delivered - one message file of a lab maildir, as virtual(8) wrote it.

    data: the file's bytes (LF line ends); mailbox: the maildir's name (a
    user, or "catchall"); headers: [(name, value)] of the header section,
    values unfolded and stripped; return_path, delivered_to, x_original_to:
    the headers Postfix prepended (None if absent); test_id: the first
    X-Test-Id; body: the bytes after the blank line that ends the headers.
    """

    def __init__(self, path, mailbox, data):
        self.path = path
        self.mailbox = mailbox
        self.data = data
        head, sep, body = data.partition(b"\n\n")
        self.body = body if sep else b""
        self.headers = []
        for line in head.split(b"\n"):
            text = line.decode("utf-8", "replace")
            if text[:1] in (" ", "\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + text.strip())
            elif ":" in text:
                name, value = text.split(":", 1)
                self.headers.append((name, value.strip()))
        self.return_path = self.header("Return-Path")
        self.delivered_to = self.header("Delivered-To")
        self.x_original_to = self.header("X-Original-To")
        self.test_id = self.header("X-Test-Id")

    def header(self, name):
        """header - the first value of header name (case-insensitive), or None."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name):
        """all - every value of header name, in order."""
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def crlf(self):
        """crlf - data with CRLF line ends (as it would travel over SMTP)."""
        return self.data.replace(b"\n", b"\r\n")

    def __repr__(self):
        return "Delivered(%s, to=%s, test_id=%s, %d bytes)" % (
            self.mailbox, self.delivered_to, self.test_id, len(self.data))


class PostfixLab:
    """PostfixLab - one private Postfix on 127.0.0.1:port delivering DOMAIN to maildirs.

    env: a harness.Env (the lab lives in ENV.dir/NAME and is removed with it),
    or None (a temporary directory of its own, removed by close()).
    users: local parts with a maildir of their own; catchall: a maildir for
    every other address at DOMAIN (else 550 5.1.1). main_extra: more main.cf
    settings {name: value}, written last (they win).
    """

    def __init__(self, env=None, relayhost_port=None, relayhost_host="127.0.0.1",
                 smtputf8=True, dsn=True, domain="pf.test", users=(), catchall=True,
                 main_extra=None, name="postfix"):
        if not os.path.exists(POSTFIX):
            raise unittest.SkipTest("postfix not installed (%s)" % POSTFIX)
        if os.geteuid() != 0:
            raise unittest.SkipTest("a private Postfix instance needs root")
        if env is not None:
            self.dir = os.path.join(env.dir, name)
            os.makedirs(self.dir)
            self.own_dir = False
        else:
            self.dir = tempfile.mkdtemp(prefix="hamr-postfix-")
            self.own_dir = True
        os.chmod(self.dir, 0o755)  # Postfix's daemons run as mail_owner and nobody
        self.host = "127.0.0.1"
        self.port = harness.free_port(self.host)
        self.relayhost_host = relayhost_host
        self.relayhost_port = relayhost_port
        self.smtputf8 = smtputf8
        self.dsn = dsn
        self.domain = domain
        self.users = list(users)
        self.catchall = catchall
        self.main_extra = dict(main_extra or {})
        self.conf_dir = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "spool")
        self.data_dir = os.path.join(self.dir, "lib")  # made by "postfix start"; see above
        self.mail_dir = os.path.join(self.dir, "mail")
        self.log_path = os.path.join(self.dir, "maillog")
        self.cmd_log_path = os.path.join(self.dir, "postfix-cmd.log")
        self.master_pid = None
        self.guard = None
        self._write()

    # --- configuration ------------------------------------------------------

    def main_settings(self):
        """main_settings - main.cf as [(name, value)], main_extra applied last."""
        nobody = pwd.getpwnam("nobody")
        discard = []
        if not self.dsn:
            discard.append("dsn")
        if not self.smtputf8:
            discard.append("smtputf8")
        relayhost = ("[%s]:%d" % (self.relayhost_host, self.relayhost_port)
                     if self.relayhost_port else "")
        settings = [
            ("compatibility_level", "3.6"),
            ("config_directory", self.conf_dir),
            ("queue_directory", self.queue_dir),
            ("data_directory", self.data_dir),
            ("mail_owner", "postfix"),
            ("setgid_group", "postdrop"),
            ("maillog_file", self.log_path),
            ("maillog_file_prefixes", self.dir),
            ("myhostname", "pf-lab.test"),
            ("mydomain", "pf-lab.test"),
            ("myorigin", "$myhostname"),
            ("mydestination", ""),
            ("alias_maps", ""),
            ("alias_database", ""),
            ("biff", "no"),
            ("append_dot_mydomain", "no"),
            ("inet_interfaces", self.host),
            ("inet_protocols", "ipv4"),
            ("mynetworks", "127.0.0.0/8"),
            ("smtpd_relay_restrictions", "permit_mynetworks, reject_unauth_destination"),
            ("local_header_rewrite_clients", ""),
            ("virtual_mailbox_domains", self.domain),
            ("virtual_mailbox_base", self.mail_dir),
            ("virtual_mailbox_maps", "texthash:" + os.path.join(self.conf_dir, "vmailbox")),
            ("virtual_uid_maps", "static:%d" % nobody.pw_uid),
            ("virtual_gid_maps", "static:%d" % nobody.pw_gid),
            ("relayhost", relayhost),
            ("smtp_bind_address", self.host),
            ("smtputf8_enable", "yes" if self.smtputf8 else "no"),
            ("smtpd_discard_ehlo_keywords", ", ".join(discard)),
            ("queue_run_delay", "1s"),
            ("minimal_backoff_time", "1s"),
            ("maximal_backoff_time", "2s"),
        ]
        names = {n for n, _ in settings}
        for n, v in self.main_extra.items():
            if n in names:
                settings = [(k, v if k == n else w) for k, w in settings]
            else:
                settings.append((n, v))
        return settings

    def _write(self):
        os.makedirs(self.conf_dir, exist_ok=True)
        os.makedirs(self.queue_dir, exist_ok=True)
        os.makedirs(self.mail_dir, exist_ok=True)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)  # virtual(8) makes the maildirs
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            f.write("# written by tests/integration/postfixlab.py\n")
            for n, v in self.main_settings():
                f.write("%s = %s\n" % (n, v))
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write("# written by tests/integration/postfixlab.py\n")
            f.write("%s:%d inet n - n - - smtpd\n" % (self.host, self.port))
            f.write(MASTER_SERVICES)
        with open(os.path.join(self.conf_dir, "vmailbox"), "w") as f:
            for user in self.users:
                f.write("%s@%s %s/%s/\n" % (user, self.domain, self.domain, user))
            if self.catchall:
                f.write("@%s %s/catchall/\n" % (self.domain, self.domain))

    # --- start and stop -----------------------------------------------------

    def _postfix(self, *args, timeout=60):
        return postfix_cmd(self.conf_dir, self.cmd_log_path, args, timeout)

    def start(self, timeout=30):
        """start - postfix start, then until the smtpd greets with 220; returns self.

        On failure the instance is stopped (what started of it) before the
        AssertionError, which quotes the log, is raised.
        """
        _RUNNING.append(self)
        # The master leaves for a session of its own: should this process die
        # without stop() (a SIGKILL, a test timeout), the guard sees EOF on its
        # stdin and stops the instance.
        with open(self.cmd_log_path, "ab") as log:
            self.guard = subprocess.Popen([harness.PYTHON, os.path.abspath(__file__), "--guard",
                                           self.conf_dir, self.cmd_log_path],
                                          stdin=subprocess.PIPE, stdout=log, stderr=log,
                                          start_new_session=True)
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        for _ in range(3):
            skip = len(self.log_text())
            rc = self._postfix("start", timeout=timeout)
            if rc == 0 or "Address already in use" not in self.log_text()[skip:]:
                break
            # The free port was taken meanwhile: another one, once more.
            self.port = harness.free_port(self.host)
            self._write()
        if rc != 0:
            raise AssertionError("postfix -c %s start: exit %d\n%s" % (self.conf_dir, rc,
                                                                       self.diagnostics()))
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                self.master_pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            self.master_pid = None

        def greets():
            conn = harness.RawSMTP(self.port, host=self.host, timeout=5)
            try:
                ok = conn.greeting[0] == 220
                conn.cmd("QUIT")
                return ok
            finally:
                conn.close()

        try:
            wait_for(greets, timeout, "the Postfix lab to greet on %s:%d" % (self.host, self.port),
                     interval=0.1)
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, self.diagnostics()))

    def running(self):
        """running - is any process of this instance alive?"""
        return bool(instance_pids(self.conf_dir))

    def stop(self, timeout=15):
        """stop - postfix stop, wait (bounded) for its processes, SIGKILL what is left.

        Returns the pids that had to be killed (an empty list on a clean stop).
        The guard (see start) is then let go.
        """
        if self in _RUNNING:
            _RUNNING.remove(self)
        killed = reap(self.conf_dir, self.cmd_log_path, timeout)
        if self.guard is not None:
            self.guard.stdin.close()  # EOF: the guard finds nothing left and exits
            try:
                self.guard.wait(timeout + 15)
            except subprocess.TimeoutExpired:
                self.guard.kill()
                self.guard.wait(10)
            self.guard = None
        return killed

    def close(self):
        """close - stop, and remove the lab's directory when it is the lab's own."""
        self.stop()
        if self.own_dir and not os.environ.get("HAMR_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def reload(self):
        """reload - main.cf and master.cf written again, then postfix reload."""
        self._write()
        rc = self._postfix("reload")
        if rc != 0:
            raise AssertionError("postfix reload: exit %d\n%s" % (rc, self.diagnostics()))

    # --- the log ------------------------------------------------------------

    def log_text(self):
        return harness.file_text(self.log_path)

    def log_tail(self, n=60):
        return harness.text_tail(self.log_text(), n)

    def diagnostics(self, n=60):
        """diagnostics - the tails of the maillog and of the postfix command output."""
        return ("----- Postfix lab maillog (%s), last %d lines -----\n%s\n"
                "----- postfix commands (%s) -----\n%s"
                % (self.log_path, n, self.log_tail(n), self.cmd_log_path,
                   harness.text_tail(harness.file_text(self.cmd_log_path), 30)))

    # --- SMTP and mailboxes -------------------------------------------------

    def ehlo_keywords(self, helo="client.test", timeout=10):
        """ehlo_keywords - the upper-cased keywords of the lab's EHLO reply (set)."""
        with smtplib.SMTP(self.host, self.port, local_hostname=helo, timeout=timeout) as s:
            code, text = s.ehlo()
            if code != 250:
                raise AssertionError("EHLO: %d %r" % (code, text))
            lines = text.decode("utf-8", "replace").splitlines()[1:]
            return {line.split()[0].upper() for line in lines if line.strip()}

    def maildir(self, user=None):
        """maildir - the maildir of user (None: the catch-all)."""
        return os.path.join(self.mail_dir, self.domain, user or "catchall")

    def delivered(self):
        """delivered - every message in the lab's maildirs (new/ and cur/), oldest first."""
        out = []
        base = os.path.join(self.mail_dir, self.domain)
        if not os.path.isdir(base):
            return out
        for mailbox in sorted(os.listdir(base)):
            for sub in ("new", "cur"):
                d = os.path.join(base, mailbox, sub)
                if not os.path.isdir(d):
                    continue
                for fn in os.listdir(d):
                    path = os.path.join(d, fn)
                    try:
                        with open(path, "rb") as f:
                            data = f.read()
                        mtime = os.stat(path).st_mtime
                    except OSError:
                        continue  # moved by a reader meanwhile
                    out.append((mtime, fn, Delivered(path, mailbox, data)))
        return [d for _, _, d in sorted(out, key=lambda t: (t[0], t[1]))]

    def wait_delivered(self, match, count=1, timeout=30):
        """wait_delivered - until count messages match; returns them (a list).

        match: an X-Test-Id value, or a predicate on a Delivered. Exactly count
        is not required here: compare len() yourself after a barrier if more
        would be a failure.
        """
        pred = (lambda d: d.test_id == match) if isinstance(match, str) else match
        what = ("X-Test-Id %s" % match) if isinstance(match, str) else "matching messages"

        def enough():
            if self.master_pid is not None and not self.running():
                raise harness.ProcessDied("the Postfix lab is not running\n" + self.diagnostics())
            found = [d for d in self.delivered() if pred(d)]
            return found if len(found) >= count else None

        try:
            return wait_for(enough, timeout, "%d message(s) with %s in the Postfix lab's maildirs"
                            % (count, what), interval=0.1)
        except harness.WaitTimeout as e:
            raise harness.WaitTimeout("%s\n%s" % (e, self.diagnostics()))

    def queue_ids_of(self, message_id):
        """queue_ids_of - Postfix queue ids whose cleanup logged message-id=<message_id>."""
        return re.findall(r"postfix/cleanup\[\d+\]: (\w+): message-id=<%s>" % re.escape(message_id),
                          self.log_text())


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--guard":
    # The guard of one instance: waits for EOF on stdin (its lab stopped, or
    # the test process gone), then stops whatever is left of the instance.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    sys.exit(1 if reap(sys.argv[2], sys.argv[3]) else 0)
