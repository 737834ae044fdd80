/* The eBPF watcher's loader and ring-buffer reader (a CPython extension over libbpf).
 *
 * Why compiled: at a ping-pong's rate the kernel produces close to a million events a second. A
 * thread of this module drains the ring buffer into memory without the GIL (one memcpy per event),
 * so the kernel's buffer never fills while Python turns events into records at its own pace;
 * Python takes the spooled bytes in large batches (Watcher.take). The BPF program asks for no
 * wakeups (the reader polls every millisecond), so a traced process never pays for waking it.
 *
 * Watcher(path, self_pid, max_payload, transports, filters, cgroup, pids, comms, exes, ignored, ring_bytes)
 *   loads and attaches watch.bpf.o; take(timeout_s) -> bytes | None (None: closed and drained);
 *   lost() -> (kernel, spool) counts; programs() -> their kernel ids; stop() stops the reader; close() detaches every program.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINKS 8
#define SPOOL_LIMIT ((size_t)2 << 30) /* bytes held in memory before events are counted as lost */

struct config {
	uint32_t self;
	uint32_t max_payload;
	uint32_t transports;
	uint32_t filters;
	uint64_t cgroup;
};

struct exe_key {
	uint64_t ino;
	uint32_t dev;
	uint32_t pad;
};

typedef struct {
	PyObject_HEAD
	struct bpf_object *obj;
	struct bpf_link *links[MAX_LINKS];
	int nlinks;
	struct ring_buffer *rb;
	int lost_fd;
	pthread_t thread;
	int thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	char *buf;
	size_t len, cap;
	uint64_t spool_lost;
	int stopping; /* set by stop(): the reader drains once more and ends */
	int done;     /* the reader has ended */
	int failed;   /* errno of a failed poll */
} Watcher;

static int quiet_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	(void)level;
	(void)fmt;
	(void)args;
	return 0; /* libbpf's own hints (ulimit -l) mislead here; errors are reported as one line */
}

static int on_event(void *ctx, void *data, size_t size)
{
	Watcher *w = ctx;
	size_t need = (size + 7) & ~(size_t)7;
	if (w->len + need > w->cap) {
		size_t cap = w->cap ? w->cap : 1 << 20;
		char *grown;
		while (cap < w->len + need)
			cap *= 2;
		if (cap > SPOOL_LIMIT || !(grown = realloc(w->buf, cap))) {
			w->spool_lost++;
			return 0;
		}
		w->buf = grown;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, data, size);
	memset(w->buf + w->len + size, 0, need - size);
	w->len += need;
	return 0;
}

static void *reader(void *arg)
{
	Watcher *w = arg;
	struct timespec pause = {0, 1000000};
	for (;;) {
		int stopping, n;
		pthread_mutex_lock(&w->lock);
		stopping = w->stopping;
		n = ring_buffer__consume(w->rb);
		if (n < 0 && n != -EINTR) {
			w->failed = -n;
			stopping = 1;
		}
		if (w->len)
			pthread_cond_broadcast(&w->cond);
		if (stopping) {
			w->done = 1;
			pthread_cond_broadcast(&w->cond);
			pthread_mutex_unlock(&w->lock);
			return NULL;
		}
		pthread_mutex_unlock(&w->lock);
		nanosleep(&pause, NULL);
	}
}

static int fill_set(struct bpf_object *obj, const char *name, PyObject *items, size_t keysize)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);
	uint8_t one = 1;
	Py_ssize_t i, n;
	if (!map) {
		PyErr_Format(PyExc_OSError, "watch.bpf.o has no map %s", name);
		return -1;
	}
	n = PySequence_Length(items);
	for (i = 0; i < n; i++) {
		PyObject *item = PySequence_GetItem(items, i);
		char key[32] = {0};
		int err;
		if (!item)
			return -1;
		if (PyBytes_Check(item)) {
			Py_ssize_t len = PyBytes_GET_SIZE(item);
			memcpy(key, PyBytes_AS_STRING(item), (size_t)len < keysize ? (size_t)len : keysize);
		} else if (PyTuple_Check(item)) { /* (dev, ino) */
			struct exe_key k = {0};
			k.dev = (uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
			k.ino = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 1));
			memcpy(key, &k, sizeof(k));
		} else if (keysize == 4) {
			uint32_t v = (uint32_t)PyLong_AsUnsignedLong(item);
			memcpy(key, &v, 4);
		} else {
			uint64_t v = PyLong_AsUnsignedLongLong(item);
			memcpy(key, &v, 8);
		}
		Py_DECREF(item);
		if (PyErr_Occurred())
			return -1;
		err = bpf_map_update_elem(bpf_map__fd(map), key, &one, BPF_ANY);
		if (err) {
			PyErr_SetFromErrno(PyExc_OSError);
			return -1;
		}
	}
	return 0;
}

static void release(Watcher *w)
{
	if (w->thread_started) {
		pthread_mutex_lock(&w->lock);
		w->stopping = 1;
		pthread_mutex_unlock(&w->lock);
		Py_BEGIN_ALLOW_THREADS
		pthread_join(w->thread, NULL);
		Py_END_ALLOW_THREADS
		w->thread_started = 0;
	}
	for (int i = 0; i < w->nlinks; i++)
		bpf_link__destroy(w->links[i]);
	w->nlinks = 0;
	if (w->rb)
		ring_buffer__free(w->rb);
	w->rb = NULL;
	if (w->obj)
		bpf_object__close(w->obj);
	w->obj = NULL;
}

static int Watcher_init(Watcher *w, PyObject *args, PyObject *kw)
{
	const char *path;
	struct config c = {0};
	unsigned long long cgroup;
	unsigned long ring_bytes;
	PyObject *pids, *comms, *exes, *ignored;
	struct bpf_program *prog;
	struct bpf_map *map;
	int err;
	uint32_t zero = 0;
	(void)kw;
	if (!PyArg_ParseTuple(args, "sIIIIKOOOOk", &path, &c.self, &c.max_payload, &c.transports, &c.filters,
			      &cgroup, &pids, &comms, &exes, &ignored, &ring_bytes))
		return -1;
	c.cgroup = cgroup;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	libbpf_set_print(quiet_print);
	w->obj = bpf_object__open_file(path, NULL);
	if (!w->obj) {
		err = errno;
		w->obj = NULL;
		errno = err;
		PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
		return -1;
	}
	map = bpf_object__find_map_by_name(w->obj, "events");
	if (map && ring_bytes)
		bpf_map__set_max_entries(map, (uint32_t)ring_bytes);
	map = bpf_object__find_map_by_name(w->obj, "scratch"); /* one per CPU, indexed by CPU */
	if (map && libbpf_num_possible_cpus() > 0)
		bpf_map__set_max_entries(map, (uint32_t)libbpf_num_possible_cpus());
	err = bpf_object__load(w->obj);
	if (err) {
		errno = -err;
		PyErr_SetFromErrno(PyExc_OSError);
		release(w);
		return -1;
	}
	map = bpf_object__find_map_by_name(w->obj, "settings");
	if (!map || bpf_map_update_elem(bpf_map__fd(map), &zero, &c, BPF_ANY)) {
		PyErr_SetFromErrno(PyExc_OSError);
		release(w);
		return -1;
	}
	if (fill_set(w->obj, "pids", pids, 4) || fill_set(w->obj, "comms", comms, 16) ||
	    fill_set(w->obj, "exes", exes, sizeof(struct exe_key)) || fill_set(w->obj, "ignored", ignored, 8)) {
		release(w);
		return -1;
	}
	w->lost_fd = bpf_map__fd(bpf_object__find_map_by_name(w->obj, "lost"));
	w->rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(w->obj, "events")), on_event, w, NULL);
	if (!w->rb) {
		PyErr_SetFromErrno(PyExc_OSError);
		release(w);
		return -1;
	}
	bpf_object__for_each_program(prog, w->obj)
	{
		struct bpf_link *link;
		if (w->nlinks == MAX_LINKS)
			break;
		link = bpf_program__attach(prog);
		if (!link) {
			err = errno;
			release(w);
			errno = err;
			PyErr_Format(PyExc_OSError, "attaching %s: %s", bpf_program__name(prog), strerror(err));
			return -1;
		}
		w->links[w->nlinks++] = link;
	}
	if (pthread_create(&w->thread, NULL, reader, w)) {
		PyErr_SetFromErrno(PyExc_OSError);
		release(w);
		return -1;
	}
	w->thread_started = 1;
	return 0;
}

static PyObject *Watcher_take(Watcher *w, PyObject *args)
{
	double timeout;
	struct timespec until;
	PyObject *out;
	if (!PyArg_ParseTuple(args, "d", &timeout))
		return NULL;
	if (!w->thread_started && !w->len)
		Py_RETURN_NONE;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)timeout;
	until.tv_nsec += (long)((timeout - (time_t)timeout) * 1e9);
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&w->lock);
	while (!w->len && !w->done) {
		if (pthread_cond_timedwait(&w->cond, &w->lock, &until) == ETIMEDOUT)
			break;
	}
	Py_END_ALLOW_THREADS
	if (!w->len) {
		int done = w->done, failed = w->failed;
		pthread_mutex_unlock(&w->lock);
		if (failed) {
			errno = failed;
			return PyErr_SetFromErrno(PyExc_OSError);
		}
		if (done)
			Py_RETURN_NONE;
		return PyBytes_FromStringAndSize("", 0);
	}
	out = PyBytes_FromStringAndSize(w->buf, (Py_ssize_t)w->len);
	w->len = 0;
	if (w->cap > (64 << 20)) { /* a burst grew it: give the memory back */
		free(w->buf);
		w->buf = NULL;
		w->cap = 0;
	}
	pthread_mutex_unlock(&w->lock);
	return out;
}

static PyObject *Watcher_lost(Watcher *w, PyObject *unused)
{
	uint64_t kernel = 0, spool;
	(void)unused;
	if (w->obj) {
		int ncpu = libbpf_num_possible_cpus();
		uint32_t one = 1;
		if (ncpu > 0) {
			uint64_t *values = calloc((size_t)ncpu, sizeof(uint64_t));
			if (values && !bpf_map_lookup_elem(w->lost_fd, &one, values))
				for (int i = 0; i < ncpu; i++)
					kernel += values[i];
			free(values);
		}
	}
	pthread_mutex_lock(&w->lock);
	spool = w->spool_lost;
	pthread_mutex_unlock(&w->lock);
	return Py_BuildValue("KK", (unsigned long long)kernel, (unsigned long long)spool);
}

static PyObject *Watcher_detach(Watcher *w, PyObject *unused)
{
	(void)unused;
	for (int i = 0; i < w->nlinks; i++)
		bpf_link__destroy(w->links[i]);
	w->nlinks = 0;
	Py_RETURN_NONE;
}

static PyObject *Watcher_stop(Watcher *w, PyObject *unused)
{
	(void)unused;
	if (w->thread_started) {
		pthread_mutex_lock(&w->lock);
		w->stopping = 1;
		pthread_mutex_unlock(&w->lock);
		Py_BEGIN_ALLOW_THREADS
		pthread_join(w->thread, NULL);
		Py_END_ALLOW_THREADS
		w->thread_started = 0;
	}
	Py_RETURN_NONE;
}

static PyObject *Watcher_add_pids(Watcher *w, PyObject *args)
{
	PyObject *pids;
	if (!PyArg_ParseTuple(args, "O", &pids))
		return NULL;
	if (!w->obj) {
		PyErr_SetString(PyExc_ValueError, "the watcher is closed");
		return NULL;
	}
	if (fill_set(w->obj, "pids", pids, 4))
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Watcher_programs(Watcher *w, PyObject *unused)
{
	struct bpf_program *prog;
	PyObject *out = PyList_New(0);
	(void)unused;
	if (!out || !w->obj)
		return out;
	bpf_object__for_each_program(prog, w->obj)
	{
		struct bpf_prog_info info;
		__u32 len = sizeof(info);
		PyObject *id;
		memset(&info, 0, sizeof(info));
		if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len))
			continue;
		id = PyLong_FromUnsignedLong(info.id);
		if (!id || PyList_Append(out, id)) {
			Py_XDECREF(id);
			Py_DECREF(out);
			return NULL;
		}
		Py_DECREF(id);
	}
	return out;
}

static PyObject *Watcher_close(Watcher *w, PyObject *unused)
{
	(void)unused;
	release(w);
	Py_RETURN_NONE;
}

static void Watcher_dealloc(Watcher *w)
{
	release(w);
	free(w->buf);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef Watcher_methods[] = {
	{"take", (PyCFunction)Watcher_take, METH_VARARGS, "spooled events (bytes), b'' on timeout, None when drained"},
	{"lost", (PyCFunction)Watcher_lost, METH_NOARGS, "(lost in the kernel, lost in the spool)"},
	{"detach", (PyCFunction)Watcher_detach, METH_NOARGS, "detach every program; the reader drains on"},
	{"stop", (PyCFunction)Watcher_stop, METH_NOARGS, "drain once more and end the reader"},
	{"close", (PyCFunction)Watcher_close, METH_NOARGS, "detach and unload everything"},
	{"programs", (PyCFunction)Watcher_programs, METH_NOARGS, "the kernel's ids of the loaded programs"},
	{"add_pids", (PyCFunction)Watcher_add_pids, METH_VARARGS, "select these processes too (--pid's children)"},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject WatcherType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcproxy.ebpf._ring.Watcher",
	.tp_basicsize = sizeof(Watcher),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Watcher_init,
	.tp_dealloc = (destructor)Watcher_dealloc,
	.tp_methods = Watcher_methods,
	.tp_doc = "a loaded and attached watch.bpf.o with its ring-buffer reader",
};

static struct PyModuleDef ring_module = {PyModuleDef_HEAD_INIT, "_ring", "eBPF loader and ring-buffer reader", -1,
					 NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ring(void)
{
	PyObject *m;
	if (PyType_Ready(&WatcherType) < 0)
		return NULL;
	m = PyModule_Create(&ring_module);
	if (!m)
		return NULL;
	Py_INCREF(&WatcherType);
	PyModule_AddObject(m, "Watcher", (PyObject *)&WatcherType);
	return m;
}
