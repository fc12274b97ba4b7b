/*
 * fakenvml: a tiny stand-in for libnvidia-ml.so.1, used by zguard's tests to
 * exercise the real cgo/dlopen path of go-nvml on machines without a GPU.
 *
 * It exports only the symbols zguard calls (and those go-nvml resolves at
 * load time). Every call re-reads a small state file, so a test changes the
 * "GPU" by rewriting that file (atomically: write a temp file, rename).
 *
 * The state file path is compiled in with -DFAKE_NVML_STATE="\"/path\"" and
 * may be overridden by the environment variable FAKE_NVML_STATE.
 *
 * State file format, one directive per line ('#' starts a comment):
 *
 *   init_error N          nvmlInit returns N (default 0 = success)
 *   driver VERSION        nvmlSystemGetDriverVersion
 *   dev IDX total BYTES used BYTES [error N] [v2 0|1] [name NAME] [uuid UUID]
 *                         one device; error N is returned by every call on it
 *                         (15 = ERROR_GPU_IS_LOST); v2 0 makes
 *                         nvmlDeviceGetMemoryInfo_v2 answer NOT_SUPPORTED
 *   proc IDX PID BYTES    a compute process on device IDX
 *                         (BYTES = -1 means NVML_VALUE_NOT_AVAILABLE)
 *   xid IDX CODE SEQ      an XID critical error on device IDX; each SEQ is
 *                         delivered once by nvmlEventSetWait (in SEQ order)
 *
 * Build: gcc -shared -fPIC -o libnvidia-ml.so.1 fakenvml.c
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef FAKE_NVML_STATE
#define FAKE_NVML_STATE "/tmp/fakenvml.state"
#endif

typedef int nvmlReturn_t;

enum {
	NVML_SUCCESS = 0,
	NVML_ERROR_UNINITIALIZED = 1,
	NVML_ERROR_INVALID_ARGUMENT = 2,
	NVML_ERROR_NOT_SUPPORTED = 3,
	NVML_ERROR_INSUFFICIENT_SIZE = 7,
	NVML_ERROR_TIMEOUT = 10,
	NVML_ERROR_GPU_IS_LOST = 15,
	NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEVS 8
#define MAX_PROCS 64
#define MAX_XIDS 16
#define XID_EVENT 8ULL /* nvmlEventTypeXidCriticalError */

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
	unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
	unsigned int version;
	unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
	unsigned int pid;
	unsigned long long usedGpuMemory;
	unsigned int gpuInstanceId;
	unsigned int computeInstanceId;
} nvmlProcessInfo_t;

struct dev {
	int present;
	unsigned long long total, used;
	int error;
	int v2;
	char name[96];
	char uuid[96];
};

struct proc {
	int dev;
	unsigned int pid;
	unsigned long long mem;
};

struct xid {
	int dev;
	unsigned long long code;
	long seq;
};

struct state {
	int init_error;
	char driver[80];
	int ndev;
	struct dev devs[MAX_DEVS];
	int nproc;
	struct proc procs[MAX_PROCS];
	int nxid;
	struct xid xids[MAX_XIDS];
};

/* Device handles are addresses inside this array; their index is the offset. */
static char handles[MAX_DEVS];
static int initialized;

/* Keep the library mapped forever: go-nvml binds symbols lazily through the
 * executable's PLT, so an unmap followed by a re-open at another address
 * would leave stale bindings behind (tests open and close the library often). */
__attribute__((constructor)) static void pin(void)
{
	Dl_info info;
	if (dladdr((void *)pin, &info) && info.dli_fname)
		dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

static void load(struct state *s)
{
	const char *path = getenv("FAKE_NVML_STATE");
	char line[512];
	FILE *f;

	memset(s, 0, sizeof(*s));
	strcpy(s->driver, "999.99.99-fake");
	if (!path || !*path)
		path = FAKE_NVML_STATE;
	f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *tok, *save = NULL;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		tok = strtok_r(line, " \t\r\n", &save);
		if (!tok)
			continue;
		if (!strcmp(tok, "init_error")) {
			tok = strtok_r(NULL, " \t\r\n", &save);
			if (tok)
				s->init_error = atoi(tok);
		} else if (!strcmp(tok, "driver")) {
			tok = strtok_r(NULL, " \t\r\n", &save);
			if (tok)
				snprintf(s->driver, sizeof(s->driver), "%s", tok);
		} else if (!strcmp(tok, "dev")) {
			struct dev *d;
			int idx;
			tok = strtok_r(NULL, " \t\r\n", &save);
			if (!tok)
				continue;
			idx = atoi(tok);
			if (idx < 0 || idx >= MAX_DEVS)
				continue;
			d = &s->devs[idx];
			d->present = 1;
			d->v2 = 1;
			snprintf(d->name, sizeof(d->name), "Fake GPU %d", idx);
			snprintf(d->uuid, sizeof(d->uuid), "GPU-fake-0000-0000-0000-00000000000%d", idx);
			while ((tok = strtok_r(NULL, " \t\r\n", &save))) {
				char *val = strtok_r(NULL, " \t\r\n", &save);
				if (!val)
					break;
				if (!strcmp(tok, "total"))
					d->total = strtoull(val, NULL, 10);
				else if (!strcmp(tok, "used"))
					d->used = strtoull(val, NULL, 10);
				else if (!strcmp(tok, "error"))
					d->error = atoi(val);
				else if (!strcmp(tok, "v2"))
					d->v2 = atoi(val);
				else if (!strcmp(tok, "name"))
					snprintf(d->name, sizeof(d->name), "%s", val);
				else if (!strcmp(tok, "uuid"))
					snprintf(d->uuid, sizeof(d->uuid), "%s", val);
			}
			if (idx + 1 > s->ndev)
				s->ndev = idx + 1;
		} else if (!strcmp(tok, "proc")) {
			char *a = strtok_r(NULL, " \t\r\n", &save);
			char *b = strtok_r(NULL, " \t\r\n", &save);
			char *c = strtok_r(NULL, " \t\r\n", &save);
			struct proc *p;
			if (!a || !b || !c || s->nproc >= MAX_PROCS)
				continue;
			p = &s->procs[s->nproc++];
			p->dev = atoi(a);
			p->pid = (unsigned int)strtoul(b, NULL, 10);
			p->mem = (c[0] == '-') ? ~0ULL : strtoull(c, NULL, 10);
		} else if (!strcmp(tok, "xid")) {
			char *a = strtok_r(NULL, " \t\r\n", &save);
			char *b = strtok_r(NULL, " \t\r\n", &save);
			char *c = strtok_r(NULL, " \t\r\n", &save);
			struct xid *x;
			if (!a || !b || !c || s->nxid >= MAX_XIDS)
				continue;
			x = &s->xids[s->nxid++];
			x->dev = atoi(a);
			x->code = strtoull(b, NULL, 10);
			x->seq = atol(c);
		}
	}
	fclose(f);
}

/* device resolves a handle to its index and the current state; it returns
 * an NVML error for unknown handles or a device marked as failing. */
static nvmlReturn_t device(nvmlDevice_t h, struct state *s, int *idx)
{
	long i = (char *)h - handles;
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	if (i < 0 || i >= MAX_DEVS)
		return NVML_ERROR_INVALID_ARGUMENT;
	load(s);
	if (!s->devs[i].present)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (s->devs[i].error)
		return s->devs[i].error;
	*idx = (int)i;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void)
{
	struct state s;
	load(&s);
	if (s.init_error)
		return s.init_error;
	initialized = 1;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
	(void)flags;
	return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void)
{
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	initialized = 0;
	return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r)
{
	switch (r) {
	case NVML_SUCCESS:
		return "Success";
	case NVML_ERROR_UNINITIALIZED:
		return "Uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT:
		return "Invalid Argument";
	case NVML_ERROR_NOT_SUPPORTED:
		return "Not Supported";
	case NVML_ERROR_INSUFFICIENT_SIZE:
		return "Insufficient Size";
	case NVML_ERROR_GPU_IS_LOST:
		return "GPU is lost";
	}
	return "Unknown Error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
	struct state s;
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	load(&s);
	if (strlen(s.driver) + 1 > length)
		return NVML_ERROR_INSUFFICIENT_SIZE;
	strcpy(version, s.driver);
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
	struct state s;
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	load(&s);
	*count = (unsigned int)s.ndev;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev)
{
	struct state s;
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	load(&s);
	if (index >= MAX_DEVS || !s.devs[index].present)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (s.devs[index].error)
		return s.devs[index].error;
	*dev = (nvmlDevice_t)&handles[index];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t h, char *name, unsigned int length)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	if (strlen(s.devs[i].name) + 1 > length)
		return NVML_ERROR_INSUFFICIENT_SIZE;
	strcpy(name, s.devs[i].name);
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int length)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	if (strlen(s.devs[i].uuid) + 1 > length)
		return NVML_ERROR_INSUFFICIENT_SIZE;
	strcpy(uuid, s.devs[i].uuid);
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	m->total = s.devs[i].total;
	m->used = s.devs[i].used;
	m->free = m->total > m->used ? m->total - m->used : 0;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	if (!s.devs[i].v2)
		return NVML_ERROR_NOT_SUPPORTED;
	m->total = s.devs[i].total;
	m->reserved = 0;
	m->used = s.devs[i].used;
	m->free = m->total > m->used ? m->total - m->used : 0;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
						     nvmlProcessInfo_t *infos)
{
	struct state s;
	int i, k;
	unsigned int n = 0, cap = *count;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	for (k = 0; k < s.nproc; k++)
		if (s.procs[k].dev == i)
			n++;
	*count = n;
	if (n > cap)
		return NVML_ERROR_INSUFFICIENT_SIZE;
	n = 0;
	for (k = 0; k < s.nproc; k++) {
		if (s.procs[k].dev != i)
			continue;
		infos[n].pid = s.procs[k].pid;
		infos[n].usedGpuMemory = s.procs[k].mem;
		infos[n].gpuInstanceId = 0xFFFFFFFF;
		infos[n].computeInstanceId = 0xFFFFFFFF;
		n++;
	}
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
						      nvmlProcessInfo_t *infos)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	(void)infos;
	if (r)
		return r;
	*count = 0;
	return NVML_SUCCESS;
}

/* Events: one event set, XID critical errors only. */

typedef struct nvmlEventSet_st *nvmlEventSet_t;

typedef struct {
	nvmlDevice_t device;
	unsigned long long eventType;
	unsigned long long eventData;
	unsigned int gpuInstanceId;
	unsigned int computeInstanceId;
} nvmlEventData_t;

static char event_set;
static unsigned long long registered; /* bit per device */
static long last_seq;

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t h, unsigned long long *types)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	*types = XID_EVENT;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	*set = (nvmlEventSet_t)&event_set;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t h, unsigned long long types, nvmlEventSet_t set)
{
	struct state s;
	int i;
	nvmlReturn_t r = device(h, &s, &i);
	if (r)
		return r;
	if ((char *)set != &event_set || types != XID_EVENT)
		return NVML_ERROR_NOT_SUPPORTED;
	registered |= 1ULL << i;
	return NVML_SUCCESS;
}

/* next_xid finds the undelivered XID with the lowest sequence number. */
static int next_xid(struct state *s)
{
	int k, best = -1;
	for (k = 0; k < s->nxid; k++) {
		if (s->xids[k].seq <= last_seq || !(registered & (1ULL << s->xids[k].dev)))
			continue;
		if (best < 0 || s->xids[k].seq < s->xids[best].seq)
			best = k;
	}
	return best;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
	const unsigned int step = 250;
	unsigned int waited = 0;
	if (!initialized)
		return NVML_ERROR_UNINITIALIZED;
	if ((char *)set != &event_set)
		return NVML_ERROR_INVALID_ARGUMENT;
	for (;;) {
		struct state s;
		int k;
		load(&s);
		k = next_xid(&s);
		if (k >= 0) {
			last_seq = s.xids[k].seq;
			memset(data, 0, sizeof(*data));
			data->device = (nvmlDevice_t)&handles[s.xids[k].dev];
			data->eventType = XID_EVENT;
			data->eventData = s.xids[k].code;
			data->gpuInstanceId = 0xFFFFFFFF;
			data->computeInstanceId = 0xFFFFFFFF;
			return NVML_SUCCESS;
		}
		if (waited >= timeoutms)
			return NVML_ERROR_TIMEOUT;
		{
			unsigned int ms = timeoutms - waited < step ? timeoutms - waited : step;
			struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
			nanosleep(&ts, NULL);
			waited += ms;
		}
	}
}

nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
	return nvmlEventSetWait_v2(set, data, timeoutms);
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
	if ((char *)set != &event_set)
		return NVML_ERROR_INVALID_ARGUMENT;
	registered = 0;
	return NVML_SUCCESS;
}
