/* The load generator's hot loops, compiled: twins of pure Python code.
 *
 * `wsop.load.pool.Pool._send_due` (the direct messages it builds, books and sends
 * inline), `wsop.load.wire.Wire._read` (the complete short text frames it reads in
 * place) and `wsop.load.ledger.Ledger.settle` (its loop: `Ledger._settle_entry`) are
 * the generator's per-message Python. Past them, a worker's CPU per message is the
 * kernel's loopback TCP.
 *
 * Twins, not replacements: each function here does what its Python original does,
 * step for step, on the same objects (the `Conn` slots, the pool's lists and dicts,
 * the ledger's `_pending` and `_order`). It books the ledger's common cases itself —
 * a direct send, a first arrival, an ack, a settled entry — and hands the counters
 * over once per call (`Ledger.booked_direct`, `Ledger.acks_counted`); everything else
 * goes through the same Python methods (team messages, queued writes, drops,
 * duplicates, replays, windows of a chaos run, frames that are not the fast layouts,
 * teams wider than 62). The Python code stays the reference and the fallback (no
 * compiler, or WSOP_PURE_LOADGEN=1); tests/load/test_hot.py gives both the same bytes
 * and the same ledger histories and compares the books.
 *
 * Differences that are not observable in the books: the recipient and the team share
 * are drawn from a xorshift generator (the Python loop uses `random.random`), mask
 * keys come from getrandom(2) 4 KiB at a time (the Python loop: `os.urandom`), and
 * each read is preceded by TCP_QUICKACK=0 (see `read_conn`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>

#define RECV_BYTES 65536 /* as wsop.load.wire.RECV_BYTES */
#define OUT_CAP (1 << 20) /* as wsop.load.wire.OUT_CAP */
#define MAX_EVENTS 1024
#define KEY_BATCH 4096

/* -- the Conn slots, by offset (bound once: `bind(Conn)`) ---------------------------- */

enum {
    C_SLOT, C_TENANT, C_USER, C_TENANT_INDEX, C_KEY_BASE, C_MY_TEAMS, C_SOCK, C_FD,
    C_TLS, C_READER, C_OUT, C_SEQ, C_READY, C_OFFSET, C_REPLAYING, C_COUNT
};
static const char *slot_names[C_COUNT] = {
    "slot", "tenant", "user", "tenant_index", "key_base", "my_teams", "sock", "fd",
    "tls", "reader", "out", "seq", "ready", "offset", "replaying",
};
static Py_ssize_t offsets[C_COUNT];
static PyTypeObject *conn_type = NULL;

#define GET(conn, i) (*(PyObject **)((char *)(conn) + offsets[i]))

static void set_slot(PyObject *conn, int i, PyObject *value) /* steals `value` */
{
    PyObject **where = (PyObject **)((char *)conn + offsets[i]);
    PyObject *old = *where;
    *where = value;
    Py_XDECREF(old);
}

static PyObject *bind_conn(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "bind() wants the Conn class");
        return NULL;
    }
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < C_COUNT; i++) {
        PyObject *d = PyDict_GetItemString(dict, slot_names[i]);
        if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "Conn has no slot %s", slot_names[i]);
            return NULL;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "Conn.%s is not an object slot", slot_names[i]);
            return NULL;
        }
        offsets[i] = m->offset;
    }
    Py_XINCREF(cls);
    Py_XSETREF(conn_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* -- small helpers --------------------------------------------------------------------- */

/* An attribute by a name interned once (PyObject_GetAttrString builds a str per call). */
#define ATTR(obj, name)                                                                  \
    ({                                                                                   \
        static PyObject *_n = NULL;                                                     \
        if (_n == NULL)                                                                  \
            _n = PyUnicode_InternFromString(name);                                       \
        _n ? PyObject_GetAttr((obj), _n) : NULL;                                         \
    })

static uint64_t rng_state = 0;
static unsigned char keys[KEY_BATCH];
static size_t keys_at = KEY_BATCH;

static int fill_random(unsigned char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

static double next_random(void) /* xorshift64*: [0, 1) with 53 bits */
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static char *put_int(char *p, long long v)
{
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *p++ = '-';
    while (n)
        *p++ = tmp[--n];
    return p;
}

#define attr_int(obj, name, out) attr_int_of(ATTR(obj, name), out)
static int attr_int_of(PyObject *v, long long *out)
{
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_attr_int(PyObject *obj, const char *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* The ledger's own structures, for the common cases booked here (see `Ledger.sent`,
 * `.received`, `.acked`: the entry is [slots, arrived mask, ack, window, sent at, team,
 * refused]); NULL members: book through the Python methods. */
typedef struct {
    PyObject *pending, *order;
    long long tenants;
} book_t;

static int book_open(book_t *b, PyObject *ledger, int sending)
{
    b->pending = b->order = NULL;
    b->tenants = 1;
    PyObject *pending = ATTR(ledger, "_pending");
    PyObject *order = ATTR(ledger, "_order");
    PyObject *edges = ATTR(ledger, "edges");
    int ok = pending && order && edges && PyDict_CheckExact(pending) && PyList_CheckExact(order);
    /* windows (chaos): a send's window is Ledger.sent's to work out */
    if (ok && sending && PyObject_IsTrue(edges) != 0)
        ok = 0;
    Py_XDECREF(edges);
    if (ok && attr_int(ledger, "tenants", &b->tenants))
        ok = 0;
    if (PyErr_Occurred()) {
        Py_XDECREF(pending), Py_XDECREF(order);
        return -1;
    }
    if (ok && b->tenants > 0) {
        b->pending = pending, b->order = order;
        return 0;
    }
    Py_XDECREF(pending), Py_XDECREF(order);
    return 0;
}

static void book_close(book_t *b)
{
    Py_CLEAR(b->pending);
    Py_CLEAR(b->order);
}

/* Ledger.sent of a direct message, less the counters (the caller hands their sums to
 * Ledger.booked_direct once per batch). */
static int book_sent(book_t *b, PyObject *key, PyObject *to, PyObject *when)
{
    PyObject *entry = PyList_New(7);
    if (entry == NULL)
        return -1;
    PyList_SET_ITEM(entry, 0, Py_NewRef(to));
    PyList_SET_ITEM(entry, 1, PyLong_FromLong(0));
    PyList_SET_ITEM(entry, 2, PyLong_FromLong(-1));
    PyList_SET_ITEM(entry, 3, PyLong_FromLong(0));
    PyList_SET_ITEM(entry, 4, Py_NewRef(when));
    PyList_SET_ITEM(entry, 5, Py_NewRef(Py_False));
    PyList_SET_ITEM(entry, 6, PyLong_FromLong(0));
    int r = PyDict_SetItem(b->pending, key, entry);
    Py_DECREF(entry);
    if (r < 0)
        return -1;
    PyObject *t = PyTuple_Pack(2, when, key);
    if (t == NULL)
        return -1;
    r = PyList_Append(b->order, t);
    Py_DECREF(t);
    return r;
}

static int is_zero(PyObject *o) /* never leaves an error set (an int past 64 bits) */
{
    return PyLong_CheckExact(o) && PyObject_IsTrue(o) == 0;
}

/* Ledger.received's common case: a pending, not refused message reaches an expected
 * recipient of its tenant for the first time (1). 0: anything else, for the Python
 * method to decide (a duplicate, a replay, a late or unexpected arrival); -1: error. */
static int book_received(book_t *b, long long receiver, PyObject *key, unsigned long long k)
{
    if (b->pending == NULL)
        return 0;
    PyObject *entry = PyDict_GetItemWithError(b->pending, key);
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 7 ||
        !is_zero(PyList_GET_ITEM(entry, 6)))
        return 0;
    PyObject *slots = PyList_GET_ITEM(entry, 0);
    if (!PyTuple_CheckExact(slots))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(slots), i;
    for (i = 0; i < n; i++) {
        PyObject *s = PyTuple_GET_ITEM(slots, i);
        if (PyLong_CheckExact(s) && PyLong_AsLongLong(s) == receiver)
            break;
    }
    PyErr_Clear();
    if (i == n || i >= 62)
        return 0;
    if ((long long)((k >> 32) % (unsigned long long)b->tenants) != receiver % b->tenants)
        return 0;
    PyObject *mask_o = PyList_GET_ITEM(entry, 1);
    if (!PyLong_CheckExact(mask_o))
        return 0;
    long long mask = PyLong_AsLongLong(mask_o);
    if (mask == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (mask & (1LL << i))
        return 0; /* a duplicate: the Python method counts it */
    PyObject *m = PyLong_FromLongLong(mask | (1LL << i));
    if (m == NULL)
        return -1;
    PyList_SetItem(entry, 1, m);
    return 1;
}

/* -- sending: Pool._send_due's loop ---------------------------------------------------- */

/* send_direct(pool, n): hand out `n` due messages, as the loop of Pool._send_due. */
static PyObject *send_direct(PyObject *module, PyObject *args)
{
    PyObject *pool;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &pool, &n))
        return NULL;
    if (conn_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(Conn) first");
        return NULL;
    }
    PyObject *conns = NULL, *order = NULL, *ledger = NULL, *members = NULL, *plan = NULL;
    PyObject *sent_m = NULL, *cancel_m = NULL, *result = NULL;
    book_t book = {NULL, NULL, 1};
    long long booked = 0;
    double first = 0.0, last = 0.0;
    long long cursor, away, blocked, index, tw;
    double share;
    if (attr_int(pool, "cursor", &cursor) || attr_int(pool, "away", &away) ||
        attr_int(pool, "blocked", &blocked) || attr_int(pool, "index", &index))
        return NULL;
    conns = ATTR(pool, "conns");
    order = ATTR(pool, "order");
    ledger = ATTR(pool, "ledger");
    members = ATTR(pool, "member_list");
    plan = ATTR(pool, "plan");
    if (!conns || !order || !ledger || !members || !plan)
        goto done;
    if (!PyList_Check(conns) || !PyList_Check(order) || !PyDict_Check(members)) {
        PyErr_SetString(PyExc_TypeError, "pool.conns, .order: lists; .member_list: dict");
        goto done;
    }
    if (attr_int(plan, "tenants_per_worker", &tw))
        goto done;
    {
        PyObject *s = ATTR(plan, "team_share");
        if (s == NULL)
            goto done;
        share = PyFloat_AsDouble(s);
        Py_DECREF(s);
        if (share == -1.0 && PyErr_Occurred())
            goto done;
    }
    sent_m = ATTR(ledger, "sent");
    cancel_m = ATTR(ledger, "cancel");
    if (!sent_m || !cancel_m || book_open(&book, ledger, 1) < 0)
        goto done;
    if (rng_state == 0 && fill_random((unsigned char *)&rng_state, sizeof rng_state))
        goto done;
    rng_state |= 1;

    Py_ssize_t k = PyList_GET_SIZE(order);
    for (Py_ssize_t i = 0; i < n && k > 0; i++) {
        if (cursor >= k)
            cursor = 0;
        long long at = PyLong_AsLongLong(PyList_GET_ITEM(order, cursor));
        if (at == -1 && PyErr_Occurred())
            goto done;
        cursor++;
        if (cursor == k)
            cursor = 0;
        if (at < 0 || at >= PyList_GET_SIZE(conns)) {
            PyErr_SetString(PyExc_IndexError, "pool.order names a slot out of range");
            goto done;
        }
        PyObject *conn = PyList_GET_ITEM(conns, at);
        if (!PyObject_TypeCheck(conn, conn_type)) {
            PyErr_SetString(PyExc_TypeError, "pool.conns holds a non-Conn");
            goto done;
        }
        if (GET(conn, C_READY) != Py_True) {
            away++;
            continue;
        }
        PyObject *out = GET(conn, C_OUT);
        if (out != NULL && out != Py_None && PyObject_Length(out) > OUT_CAP) {
            blocked++;
            continue;
        }
        PyObject *my_teams = GET(conn, C_MY_TEAMS);
        if (my_teams != NULL && PyObject_IsTrue(my_teams) == 1 && next_random() < share) {
            PyObject *r = PyObject_CallMethod(pool, "_send_team", "O", conn);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            continue;
        }
        long long seq = PyLong_AsLongLong(GET(conn, C_SEQ));
        long long slot = PyLong_AsLongLong(GET(conn, C_SLOT));
        long long user_self = PyLong_AsLongLong(GET(conn, C_USER));
        long long ti = PyLong_AsLongLong(GET(conn, C_TENANT_INDEX));
        long long key_base = PyLong_AsLongLong(GET(conn, C_KEY_BASE));
        if (PyErr_Occurred())
            goto done;
        set_slot(conn, C_SEQ, PyLong_FromLongLong(seq + 1));
        int64_t ts = now_us();
        PyObject *pool_list = PyDict_GetItemWithError(members, GET(conn, C_TENANT));
        if (pool_list == NULL || !PyList_Check(pool_list) || PyList_GET_SIZE(pool_list) == 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_LookupError, "no member list for the tenant");
            goto done;
        }
        Py_ssize_t m = PyList_GET_SIZE(pool_list);
        long long user = PyLong_AsLongLong(PyList_GET_ITEM(pool_list, (Py_ssize_t)(next_random() * m)));
        if (user == user_self && m > 1)
            user = PyLong_AsLongLong(PyList_GET_ITEM(pool_list, (Py_ssize_t)(next_random() * m)));
        if (PyErr_Occurred())
            goto done;
        long long key = key_base | seq;
        PyObject *key_o = PyLong_FromLongLong(key);
        PyObject *to = Py_BuildValue("(L)", user * tw + ti);
        PyObject *when = PyFloat_FromDouble((double)ts / 1e6);
        if (!key_o || !to || !when) {
            Py_XDECREF(key_o), Py_XDECREF(to), Py_XDECREF(when);
            goto done;
        }
        PyObject *r; /* booked before it can arrive */
        if (book.pending != NULL) {
            int b = book_sent(&book, key_o, to, when);
            r = b < 0 ? NULL : Py_NewRef(Py_None);
            if (b == 0) {
                if (!booked++)
                    first = (double)ts / 1e6;
                last = (double)ts / 1e6;
            }
        } else {
            PyObject *sargs[3] = {key_o, to, when};
            r = PyObject_Vectorcall(sent_m, sargs, 3, NULL);
        }
        Py_DECREF(to), Py_DECREF(when);
        if (r == NULL) {
            Py_DECREF(key_o);
            goto done;
        }
        Py_DECREF(r);

        unsigned char frame[2 + 4 + 256]; /* six numbers of at most 20 characters: < 250 */
        char *text = (char *)frame + 6, *p = text;
        p = memcpy(p, "{\"type\":\"direct\",\"to\":", 22), p += 22;
        p = put_int(p, user);
        memcpy(p, ",\"data\":[", 9), p += 9;
        p = put_int(p, index), *p++ = ',';
        p = put_int(p, slot), *p++ = ',';
        p = put_int(p, seq), *p++ = ',';
        p = put_int(p, ts);
        memcpy(p, "],\"id\":\"", 8), p += 8;
        p = put_int(p, seq);
        *p++ = '"', *p++ = '}';
        Py_ssize_t len = p - text;
        out = GET(conn, C_OUT);
        if ((out != NULL && out != Py_None) || len > 125 || GET(conn, C_TLS) == Py_True) {
            PyObject *masker = ATTR(pool, "masker");
            PyObject *f = masker ? PyObject_CallMethod(masker, "frame", "y#", text, len) : NULL;
            Py_XDECREF(masker);
            PyObject *ok = f ? PyObject_CallMethod(pool, "_write", "OO", conn, f) : NULL;
            Py_XDECREF(f);
            if (ok == NULL) {
                Py_DECREF(key_o);
                goto done;
            }
            int wrote = PyObject_IsTrue(ok);
            Py_DECREF(ok);
            if (!wrote) {
                r = PyObject_CallOneArg(cancel_m, key_o);
                Py_XDECREF(r);
                if (r == NULL) {
                    Py_DECREF(key_o);
                    goto done;
                }
            }
            Py_DECREF(key_o);
            continue;
        }
        if (keys_at >= KEY_BATCH) {
            if (fill_random(keys, KEY_BATCH)) {
                Py_DECREF(key_o);
                goto done;
            }
            keys_at = 0;
        }
        unsigned char *mask = frame + 2;
        memcpy(mask, keys + keys_at, 4);
        keys_at += 4;
        frame[0] = 0x81;
        frame[1] = (unsigned char)(0x80 | len);
        for (Py_ssize_t j = 0; j < len; j++)
            frame[6 + j] ^= mask[j & 3];
        Py_ssize_t total = 6 + len;
        long long fd = PyLong_AsLongLong(GET(conn, C_FD));
        ssize_t sent;
        do {
            sent = send((int)fd, frame, (size_t)total, 0);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            sent = 0;
        if (sent < 0) {
            r = PyObject_CallOneArg(cancel_m, key_o);
            Py_DECREF(key_o);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            r = PyObject_CallMethod(pool, "_drop", "Os", conn, "send failed");
            if (r == NULL)
                goto done;
            Py_DECREF(r);
            continue;
        }
        Py_DECREF(key_o);
        if (sent < total) {
            set_slot(conn, C_OUT, PyByteArray_FromStringAndSize((char *)frame + sent, total - sent));
            if (GET(conn, C_OUT) == NULL) {
                set_slot(conn, C_OUT, Py_NewRef(Py_None));
                goto done;
            }
            PyObject *ep = ATTR(pool, "ep");
            r = ep ? PyObject_CallMethod(ep, "modify", "Li", fd, EPOLLIN | EPOLLOUT) : NULL;
            Py_XDECREF(ep);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    result = Py_NewRef(Py_None);
done:
    book_close(&book);
    if (booked) { /* the counters of what was booked here, even if something failed */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *r = PyObject_CallMethod(ledger, "booked_direct", "Ldd", booked, first, last);
        if (r == NULL)
            Py_CLEAR(result);
        Py_XDECREF(r);
        if (et != NULL)
            PyErr_Restore(et, ev, tb);
    }
    if (set_attr_int(pool, "cursor", cursor) || set_attr_int(pool, "away", away) ||
        set_attr_int(pool, "blocked", blocked))
        Py_CLEAR(result);
    Py_XDECREF(conns), Py_XDECREF(order), Py_XDECREF(ledger), Py_XDECREF(members);
    Py_XDECREF(plan), Py_XDECREF(sent_m), Py_XDECREF(cancel_m);
    return result;
}

/* -- receiving: Wire._read's fast frames ----------------------------------------------- */

/* The stack's layouts of a delivery of ours and of an ack, as wire._FAST reads them. */
typedef struct {
    int kind; /* 1: delivery, 2: ack, 0: neither (the Python path reads it) */
    long long g[4];
    Py_ssize_t end; /* a delivery: where its match ends */
} fast_t;

static int digits(const unsigned char *s, Py_ssize_t *i, Py_ssize_t end, long long *v, int max)
{
    Py_ssize_t start = *i;
    long long x = 0;
    while (*i < end && s[*i] >= '0' && s[*i] <= '9') {
        if (*i - start >= max)
            return -1; /* longer than C reads exactly: the Python path */
        x = x * 10 + (s[*i] - '0');
        (*i)++;
    }
    if (*i == start)
        return 0;
    *v = x;
    return 1;
}

static int lit(const unsigned char *s, Py_ssize_t *i, Py_ssize_t end, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(end - *i) < n || memcmp(s + *i, w, n))
        return 0;
    *i += (Py_ssize_t)n;
    return 1;
}

/* 0 the layout, -1 not it, -2 it but a number too long for C (the Python path) */
static int match_fast(const unsigned char *s, Py_ssize_t i, Py_ssize_t end, fast_t *f)
{
    f->kind = 0;
    if (!lit(s, &i, end, "{\"type\":\""))
        return -1;
    if (lit(s, &i, end, "message\",\"from\":")) {
        long long from;
        if (i < end && s[i] == '-')
            i++;
        int r = digits(s, &i, end, &from, 18);
        if (r <= 0)
            return r == 0 ? -1 : -2;
        if (!lit(s, &i, end, ",\"data\":["))
            return -1;
        const int max[4] = {18, 9, 9, 18}; /* as wire._FAST: sender and seq, 9 digits */
        for (int k = 0; k < 4; k++) {
            r = digits(s, &i, end, &f->g[k], max[k]);
            if (r <= 0)
                return r == 0 ? -1 : -2;
            if (!lit(s, &i, end, k < 3 ? "," : "],"))
                return -1;
        }
        f->kind = 1, f->end = i;
        return 0;
    }
    if (lit(s, &i, end, "ack\",\"id\":\"")) {
        int r = digits(s, &i, end, &f->g[0], 18);
        if (r <= 0)
            return r == 0 ? -1 : -2;
        if (!lit(s, &i, end, "\",\"delivered\":"))
            return -1;
        r = digits(s, &i, end, &f->g[1], 18);
        if (r <= 0)
            return r == 0 ? -1 : -2;
        f->g[2] = 0;
        if (lit(s, &i, end, ",\"undelivered\":")) {
            r = digits(s, &i, end, &f->g[2], 18);
            if (r <= 0)
                return r == 0 ? -1 : -2;
        }
        if (!lit(s, &i, end, "}") || i != end)
            return -1;
        f->kind = 2;
        return 0;
    }
    return -1;
}

static Py_ssize_t find(const unsigned char *s, Py_ssize_t from, Py_ssize_t to, const char *w)
{
    size_t n = strlen(w);
    if (to - from < (Py_ssize_t)n)
        return -1;
    const unsigned char *at = memmem(s + from, (size_t)(to - from), w, n);
    return at ? at - s : -1;
}

typedef struct {
    PyObject *pool, *ledger, *received, *acked, *foreign, *direct, *team;
    long long index, now_us;
    book_t book;
    long long acks, undelivered, mismatched; /* Ledger.acked's counters, summed here */
} reading_t;

/* One complete short text frame s[start:pos] (n bytes), as the loop of Wire._read. */
static int one_frame(reading_t *rd, PyObject *conn, PyObject *sock, const unsigned char *s,
                     Py_ssize_t start, Py_ssize_t pos, int n, int *gone)
{
    fast_t f;
    int m = match_fast(s, start, pos, &f);
    if (m == 0 && f.kind == 1) {
        long long d = rd->now_us - f.g[3];
        if (d > (1LL << 30) || d < -(1LL << 30))
            m = -2; /* a latency the packed sample cannot hold in C: the Python path */
    }
    if (m != 0) {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)s + start, pos - start);
        PyObject *r = raw ? PyObject_CallMethod(rd->pool, "_on_text", "OO", conn, raw) : NULL;
        Py_XDECREF(raw);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        if (GET(conn, C_SOCK) != sock)
            *gone = 1; /* dropped while handling the batch */
        return 0;
    }
    PyObject *r;
    if (f.kind == 1) {
        long long worker = f.g[0], sender = f.g[1], seq = f.g[2], ts = f.g[3];
        Py_ssize_t at = find(s, f.end, pos, ",\"offset\":\"");
        if (at >= 0) {
            Py_ssize_t a = at + 11, b = pos - 2;
            PyObject *off = PyBytes_FromStringAndSize((const char *)s + a, b > a ? b - a : 0);
            if (off == NULL)
                return -1;
            set_slot(conn, C_OFFSET, off);
        }
        if (worker != rd->index) {
            PyObject *t = PyFloat_FromDouble((double)ts / 1e6);
            r = t ? PyObject_CallOneArg(rd->foreign, t) : NULL;
            Py_XDECREF(t);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
            return 0;
        }
        PyObject *key = PyLong_FromUnsignedLongLong(((unsigned long long)sender << 32) |
                                                    (unsigned long long)seq);
        PyObject *replaying = GET(conn, C_REPLAYING);
        if (key == NULL)
            return -1;
        int first = 0;
        if (replaying == NULL || replaying == Py_False) {
            long long receiver = PyLong_AsLongLong(GET(conn, C_SLOT));
            if (receiver == -1 && PyErr_Occurred()) {
                Py_DECREF(key);
                return -1;
            }
            first = book_received(&rd->book, receiver, key,
                                  ((unsigned long long)sender << 32) | (unsigned long long)seq);
            if (first < 0) {
                Py_DECREF(key);
                return -1;
            }
        }
        if (first == 0) { /* not the common case: Ledger.received decides */
            PyObject *t = PyFloat_FromDouble((double)ts / 1e6);
            if (t == NULL) {
                Py_DECREF(key);
                return -1;
            }
            PyObject *args[4] = {GET(conn, C_SLOT), key, t, replaying ? replaying : Py_False};
            r = PyObject_Vectorcall(rd->received, args, 4, NULL);
            Py_DECREF(t);
            if (r == NULL) {
                Py_DECREF(key);
                return -1;
            }
            first = PyObject_IsTrue(r);
            Py_DECREF(r);
        }
        Py_DECREF(key);
        if (first == 1) {
            PyObject *list = find(s, f.end, pos, "\"teams\":") >= 0 ? rd->team : rd->direct;
            long long d = rd->now_us - ts;
            PyObject *sample = PyLong_FromLongLong(d * 4294967296LL + n);
            if (sample == NULL || PyList_Append(list, sample) < 0) {
                Py_XDECREF(sample);
                return -1;
            }
            Py_DECREF(sample);
        }
        return 0;
    }
    long long key_base = PyLong_AsLongLong(GET(conn, C_KEY_BASE));
    if (key_base == -1 && PyErr_Occurred())
        return -1;
    PyObject *key = PyLong_FromLongLong(key_base | f.g[0]);
    if (key == NULL)
        return -1;
    if (rd->book.pending != NULL && f.g[1] < (1LL << 31) && f.g[2] < (1LL << 31)) {
        /* Ledger.acked, its counters summed for Ledger.acks_counted */
        PyObject *entry = PyDict_GetItemWithError(rd->book.pending, key);
        Py_DECREF(key);
        if (entry == NULL && PyErr_Occurred())
            return -1;
        rd->acks++;
        rd->undelivered += f.g[2];
        if (entry == NULL || !PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 7)
            return 0;
        PyObject *u = PyLong_FromLongLong(f.g[2]);
        if (u == NULL)
            return -1;
        PyList_SetItem(entry, 2, u);
        PyObject *team = PyList_GET_ITEM(entry, 5), *slots = PyList_GET_ITEM(entry, 0);
        int is_team = PyObject_IsTrue(team);
        if (is_team < 0)
            return -1;
        if (is_team) {
            Py_ssize_t n = PyObject_Length(slots);
            if (n < 0)
                return -1;
            if (f.g[1] + f.g[2] != n)
                rd->mismatched++;
        }
        return 0;
    }
    PyObject *dv = PyLong_FromLongLong(f.g[1]), *un = PyLong_FromLongLong(f.g[2]);
    if (!key || !dv || !un) {
        Py_XDECREF(key), Py_XDECREF(dv), Py_XDECREF(un);
        return -1;
    }
    PyObject *args[3] = {key, dv, un};
    r = PyObject_Vectorcall(rd->acked, args, 3, NULL);
    Py_DECREF(key), Py_DECREF(dv), Py_DECREF(un);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One recv on a plain (non-TLS) connection and its frames, as Wire._read. */
static int read_conn(reading_t *rd, PyObject *conn, unsigned char *buf)
{
    PyObject *sock = GET(conn, C_SOCK);
    if (sock == NULL || sock == Py_None)
        return 0;
    long long fd = PyLong_AsLongLong(GET(conn, C_FD));
    if (fd == -1 && PyErr_Occurred())
        return -1;
    ssize_t got;
    /* Delayed ACKs on for this read. A small segment read outside "pingpong" mode (we
     * send on a connection every 100 ms, long after its last arrival) has the kernel
     * send a bare ACK from inside recv(): a loopback packet, both ends' TCP work, on
     * our clock (~3 us a message, bench/loadgen.py). TCP_QUICKACK=0 re-enters pingpong
     * mode, so the ACK rides the next frame out or the delayed-ACK timer. Not sticky
     * (the timer leaves pingpong mode): set before every read; an AF_UNIX socket (the
     * tests) refuses it, harmlessly. */
    static const int zero = 0;
    setsockopt((int)fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    do {
        got = recv((int)fd, buf, RECV_BYTES, 0);
    } while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (got <= 0) {
        PyObject *r = PyObject_CallMethod(rd->pool, "_drop", "O", conn);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    Py_INCREF(sock); /* the identity to compare with after Python calls */
    Py_ssize_t end = got, pos = 0;
    int gone = 0, rc = 0;
    PyObject *reader = GET(conn, C_READER);
    PyObject *idle = reader ? ATTR(reader, "idle") : NULL;
    if (idle == NULL) {
        rc = -1;
        goto out;
    }
    int is_idle = PyObject_IsTrue(idle);
    Py_DECREF(idle);
    if (is_idle == 1) {
        while (end - pos >= 2 && buf[pos] == 0x81) {
            int n = buf[pos + 1];
            Py_ssize_t start = pos + 2;
            if (n > 125 || start + n > end)
                break;
            pos = start + n;
            if (one_frame(rd, conn, sock, buf, start, pos, n, &gone) < 0) {
                rc = -1;
                goto out;
            }
            if (gone)
                goto out;
        }
    }
    if (pos < end) {
        PyObject *rest = PyBytes_FromStringAndSize((const char *)buf + pos, end - pos);
        PyObject *r = rest ? PyObject_CallMethod(rd->pool, "_slow_frames", "OOO", conn, sock, rest)
                           : NULL;
        Py_XDECREF(rest);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
out:
    Py_DECREF(sock);
    return rc;
}

/* step_io(pool): the ready sockets, as Pool._ready_io: EPOLLOUT flushes
 * (Python), readable plain sockets are read here, TLS ones by Wire._read. */
static PyObject *step_io(PyObject *module, PyObject *pool)
{
    if (conn_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(Conn) first");
        return NULL;
    }
    long long epfd;
    PyObject *ep = ATTR(pool, "ep");
    PyObject *fdo = ep ? PyObject_CallMethod(ep, "fileno", NULL) : NULL;
    Py_XDECREF(ep);
    if (fdo == NULL)
        return NULL;
    epfd = PyLong_AsLongLong(fdo);
    Py_DECREF(fdo);
    if (epfd == -1 && PyErr_Occurred())
        return NULL;
    struct epoll_event evs[MAX_EVENTS];
    int count;
    do {
        count = epoll_wait((int)epfd, evs, MAX_EVENTS, 0);
    } while (count < 0 && errno == EINTR);
    if (count < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (count == 0)
        return PyLong_FromLong(0);
    reading_t rd = {.pool = pool, .now_us = now_us(), .book = {NULL, NULL, 1}};
    PyObject *result = NULL, *by_fd = NULL, *latency = NULL, *samples = NULL;
    unsigned char *buf = NULL;
    if (set_attr_int(pool, "_now_us", rd.now_us) || attr_int(pool, "index", &rd.index))
        return NULL;
    by_fd = ATTR(pool, "by_fd");
    rd.ledger = ATTR(pool, "ledger");
    latency = ATTR(pool, "latency");
    if (!by_fd || !rd.ledger || !latency || !PyDict_Check(by_fd))
        goto done;
    samples = ATTR(latency, "samples");
    rd.received = ATTR(rd.ledger, "received");
    rd.acked = ATTR(rd.ledger, "acked");
    rd.foreign = ATTR(rd.ledger, "foreign");
    if (!samples || !rd.received || !rd.acked || !rd.foreign || !PyDict_Check(samples))
        goto done;
    if (book_open(&rd.book, rd.ledger, 0) < 0)
        goto done;
    rd.direct = PyDict_GetItemString(samples, "direct");
    rd.team = PyDict_GetItemString(samples, "team");
    if (!rd.direct || !rd.team || !PyList_Check(rd.direct) || !PyList_Check(rd.team)) {
        PyErr_SetString(PyExc_TypeError, "latency.samples wants lists 'direct' and 'team'");
        goto done;
    }
    /* one buffer for every call (the GIL is held throughout); a fresh one only if a
     * Python callback ever re-entered step_io while it is in use */
    static unsigned char shared[RECV_BYTES];
    static int shared_busy = 0;
    if (!shared_busy) {
        buf = shared;
        shared_busy = 1;
    } else if ((buf = PyMem_Malloc(RECV_BYTES)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < count; i++) {
        PyObject *fd = PyLong_FromLong(evs[i].data.fd);
        if (fd == NULL)
            goto done;
        PyObject *conn = PyDict_GetItemWithError(by_fd, fd);
        Py_DECREF(fd);
        if (conn == NULL) {
            if (PyErr_Occurred())
                goto done;
            continue;
        }
        if (!PyObject_TypeCheck(conn, conn_type)) {
            PyErr_SetString(PyExc_TypeError, "pool.by_fd holds a non-Conn");
            goto done;
        }
        Py_INCREF(conn);
        uint32_t ev = evs[i].events;
        int rc = 0;
        if (ev & EPOLLOUT) {
            PyObject *r = PyObject_CallMethod(pool, "_flush", "O", conn);
            rc = r ? 0 : -1;
            Py_XDECREF(r);
        }
        if (rc == 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            if (GET(conn, C_TLS) == Py_True) {
                PyObject *r = PyObject_CallMethod(pool, "_read", "O", conn);
                rc = r ? 0 : -1;
                Py_XDECREF(r);
            } else {
                rc = read_conn(&rd, conn, buf);
            }
        }
        Py_DECREF(conn);
        if (rc < 0)
            goto done;
    }
    result = PyLong_FromLong(count);
done:
    book_close(&rd.book);
    if (rd.acks) { /* the counters of the acks booked here, even if something failed */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *r = PyObject_CallMethod(rd.ledger, "acks_counted", "LLL", rd.acks,
                                          rd.undelivered, rd.mismatched);
        if (r == NULL)
            Py_CLEAR(result);
        Py_XDECREF(r);
        if (et != NULL)
            PyErr_Restore(et, ev, tb);
    }
    if (buf == shared)
        shared_busy = 0;
    else
        PyMem_Free(buf);
    Py_XDECREF(by_fd), Py_XDECREF(latency), Py_XDECREF(samples), Py_XDECREF(rd.ledger);
    Py_XDECREF(rd.received), Py_XDECREF(rd.acked), Py_XDECREF(rd.foreign);
    return result;
}


/* -- settling: Ledger.settle's loop ---------------------------------------------------- */

static PyObject *str_append, *str_add, *str_add_direct, *str_settle_one;

/* settle_span(ledger, order, head, end, now, windows) -> (missing, done, done_in, stop):
 * the loop of Ledger.settle over order[head:end], step for step (Ledger._settle_entry);
 * what it cannot close here goes to Ledger._settle_one, arrivals it cannot row to
 * Arrivals.add(_direct). It stops before an entry of more than 62 recipients (`stop`;
 * `end` when it did not), for Python's arithmetic; the caller settles that one and
 * goes on. */
static PyObject *settle_span(PyObject *module, PyObject *args)
{
    PyObject *ledger, *order, *now;
    Py_ssize_t head, end, windows;
    if (!PyArg_ParseTuple(args, "OO!nnOn", &ledger, &PyList_Type, &order, &head, &end, &now,
                          &windows))
        return NULL;
    if (str_append == NULL) {
        str_append = PyUnicode_InternFromString("append");
        str_add = PyUnicode_InternFromString("add");
        str_add_direct = PyUnicode_InternFromString("add_direct");
        str_settle_one = PyUnicode_InternFromString("_settle_one");
        if (!str_append || !str_add || !str_add_direct || !str_settle_one)
            return NULL;
    }
    if (head < 0 || end > PyList_GET_SIZE(order) || head > end || windows < 1) {
        PyErr_SetString(PyExc_ValueError, "settle_span: a span outside the order");
        return NULL;
    }
    PyObject *pending = ATTR(ledger, "_pending"), *upto = ATTR(ledger, "_settled_upto");
    PyObject *arrivals = ATTR(ledger, "_arrivals"), *rows = NULL, *result = NULL;
    long long *done_in = PyMem_Calloc((size_t)windows, sizeof(long long));
    long long missing = 0, done = 0;
    Py_ssize_t stop = end;
    if (!pending || !upto || !arrivals || !done_in)
        goto done;
    rows = ATTR(arrivals, "rows");
    if (!rows || !PyDict_Check(pending) || !PyDict_Check(upto) || !PyDict_Check(rows)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "settle_span: the ledger's dicts");
        goto done;
    }
    for (Py_ssize_t at = head; at < end; at++) {
        PyObject *item = PyList_GET_ITEM(order, at);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "settle_span: order holds (sent at, key)");
            goto done;
        }
        PyObject *key = Py_NewRef(PyTuple_GET_ITEM(item, 1));
        PyObject *entry = PyDict_GetItemWithError(pending, key);
        if (entry == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                goto done;
            continue; /* cancelled */
        }
        Py_INCREF(entry);
        if (PyDict_DelItem(pending, key) < 0) {
            Py_DECREF(key), Py_DECREF(entry);
            goto done;
        }
        int rc = -1;
        unsigned long long k = PyLong_AsUnsignedLongLong(key);
        if (k == (unsigned long long)-1 && PyErr_Occurred())
            goto next;
        if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 7) {
            PyErr_SetString(PyExc_TypeError, "settle_span: a ledger entry of 7");
            goto next;
        }
        long long sender = (long long)(k >> 32), seq = (long long)(k & 0xFFFFFFFFULL);
        PyObject *sender_o = PyLong_FromLongLong(sender);
        if (sender_o == NULL)
            goto next;
        PyObject *was = PyDict_GetItemWithError(upto, sender_o);
        long long prev = -1;
        if (was != NULL)
            prev = PyLong_AsLongLong(was);
        if (PyErr_Occurred()) {
            Py_DECREF(sender_o);
            goto next;
        }
        if (seq > prev) {
            PyObject *seq_o = PyLong_FromLongLong(seq);
            int r = seq_o ? PyDict_SetItem(upto, sender_o, seq_o) : -1;
            Py_XDECREF(seq_o);
            if (r < 0) {
                Py_DECREF(sender_o);
                goto next;
            }
        }
        PyObject *slots = PyList_GET_ITEM(entry, 0), *mask_o = PyList_GET_ITEM(entry, 1);
        Py_ssize_t n = PyObject_Length(slots);
        long long mask = PyLong_AsLongLong(mask_o);
        int big_mask = mask == -1 && PyErr_Occurred();
        if (big_mask)
            PyErr_Clear(); /* more than 63 recipients: the Python loop's arithmetic */
        if (n < 0 || big_mask || n > 62) { /* a wide team message: Ledger._settle_entry */
            PyErr_Clear();
            Py_DECREF(sender_o);
            /* put it back as it was: the Python method settles it from the start */
            int r = PyDict_SetItem(pending, key, entry);
            Py_DECREF(key);
            Py_DECREF(entry);
            if (r < 0)
                goto done;
            stop = at;
            break;
        }
        if (mask == 1 && n == 1) { /* a direct message that arrived: remembered */
            PyObject *to = PySequence_GetItem(slots, 0);
            long long to_v = to ? PyLong_AsLongLong(to) : -1;
            PyObject *row = PyDict_GetItemWithError(rows, sender_o);
            PyObject *r = NULL;
            if (to == NULL || (to_v == -1 && PyErr_Occurred()) || (!row && PyErr_Occurred())) {
                Py_XDECREF(to);
                Py_DECREF(sender_o);
                goto next;
            }
            Py_ssize_t len = row ? PyObject_Length(row) : -1;
            if (row != NULL && len == seq && to_v >= 0 && to_v < (1LL << 31))
                r = PyObject_CallMethodOneArg(row, str_append, to);
            else
                r = PyObject_CallMethodObjArgs(arrivals, str_add_direct, to, key, NULL);
            Py_DECREF(to);
            if (r == NULL) {
                Py_DECREF(sender_o);
                goto next;
            }
            Py_DECREF(r);
        } else if (mask) {
            for (Py_ssize_t i = 0; i < n; i++) {
                if (!(mask >> i & 1))
                    continue;
                PyObject *slot = PySequence_GetItem(slots, i);
                PyObject *r = slot ? PyObject_CallMethodObjArgs(arrivals, str_add, slot, key, NULL)
                                   : NULL;
                Py_XDECREF(slot);
                if (r == NULL) {
                    Py_DECREF(sender_o);
                    goto next;
                }
                Py_DECREF(r);
            }
        }
        Py_DECREF(sender_o);
        int refused = PyObject_IsTrue(PyList_GET_ITEM(entry, 6));
        if (refused < 0)
            goto next;
        if (refused) {
            rc = 0;
            goto next;
        }
        long long ack = PyLong_AsLongLong(PyList_GET_ITEM(entry, 2));
        long long window = PyLong_AsLongLong(PyList_GET_ITEM(entry, 3));
        if (PyErr_Occurred())
            goto next;
        if (ack < 0)
            missing++;
        if (mask == (1LL << n) - 1 && window >= 0 && window < windows) {
            done += n;
            done_in[window] += n;
        } else {
            PyObject *r = PyObject_CallMethodObjArgs(ledger, str_settle_one, key, entry, now, NULL);
            if (r == NULL)
                goto next;
            Py_DECREF(r);
        }
        rc = 0;
    next:
        Py_DECREF(key);
        Py_DECREF(entry);
        if (rc < 0)
            goto done;
    }
    {
        PyObject *in = PyList_New(windows);
        if (in == NULL)
            goto done;
        for (Py_ssize_t w = 0; w < windows; w++) {
            PyObject *v = PyLong_FromLongLong(done_in[w]);
            if (v == NULL) {
                Py_DECREF(in);
                goto done;
            }
            PyList_SET_ITEM(in, w, v);
        }
        result = Py_BuildValue("LLNn", missing, done, in, stop);
    }
done:
    PyMem_Free(done_in);
    Py_XDECREF(pending), Py_XDECREF(upto), Py_XDECREF(arrivals), Py_XDECREF(rows);
    return result;
}

static PyMethodDef methods[] = {
    {"settle_span", settle_span, METH_VARARGS, "Ledger.settle's loop over order[head:end]."},
    {"bind", bind_conn, METH_O, "Learn the Conn class's slot layout (once, at import)."},
    {"send_direct", send_direct, METH_VARARGS, "Pool._send_due's loop over n due messages."},
    {"step_io", step_io, METH_O, "Pool._ready_io, compiled; returns how many were ready."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hot", "The load generator's hot loops, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__hot(void)
{
    return PyModule_Create(&module);
}
