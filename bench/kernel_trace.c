/* kernel_trace.c — a CUPTI activity tracer injected into any CUDA program: every kernel, memcpy and
 * memset the program runs, with its GPU start and end, stream and name, as CSV lines
 * "start_ns,end_ns,stream,K|C|S,name" in $TRACE_OUT (default /tmp/trace.csv), flushed at exit.
 * bench/trace_summary.py turns the file into a step's timeline: busy and idle time, the kernels by
 * total time, the largest gaps.
 *
 * Built on the GPU machine (this development machine has no CUPTI) by bench/kernel_trace.sh, which
 * finds cupti.h and names the newest activity record structs of that CUPTI (KTYPE, MTYPE, STYPE);
 * used as
 *   CUDA_INJECTION64_PATH=/path/libkernel_trace.so TRACE_OUT=out.csv BIN_DIR/train_step ...
 * The CUDA driver calls InitializeInjection before the program's first CUDA call. Records come
 * from CUPTI's buffers, so the program's own kernels run as they would; each launch costs a record.
 * A failing CUPTI call prints the call and CUPTI's message on stderr and turns tracing off. */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *out; /* the CSV; NULL once tracing is off */

#define CUPTI_OK(call)                                                                          \
    do {                                                                                        \
        CUptiResult r_ = (call);                                                                \
        if (r_ != CUPTI_SUCCESS) {                                                              \
            const char *m_ = NULL;                                                              \
            cuptiGetResultString(r_, &m_);                                                      \
            fprintf(stderr, "kernel_trace: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, m_ ? m_ : "?"); \
            return 0;                                                                           \
        }                                                                                       \
    } while (0)

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *size = (size_t)16 << 20;
    *buffer = aligned_alloc(64, *size); /* CUPTI drops records when it gets NULL */
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)context, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    while (out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const KTYPE *k = (const KTYPE *)rec;
            fprintf(out, "%llu,%llu,%u,K,%s\n", (unsigned long long)k->start, (unsigned long long)k->end, k->streamId,
                    k->name);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const MTYPE *m = (const MTYPE *)rec;
            fprintf(out, "%llu,%llu,%u,C,memcpy%d_%llu\n", (unsigned long long)m->start, (unsigned long long)m->end,
                    m->streamId, (int)m->copyKind, (unsigned long long)m->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const STYPE *m = (const STYPE *)rec;
            fprintf(out, "%llu,%llu,%u,S,memset_%llu\n", (unsigned long long)m->start, (unsigned long long)m->end,
                    m->streamId, (unsigned long long)m->bytes);
        }
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS && dropped)
        fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
    free(buffer);
}

static void finish(void) {
    if (!out) return;
    CUptiResult r = cuptiActivityFlushAll(1);
    if (r != CUPTI_SUCCESS) fprintf(stderr, "kernel_trace: cuptiActivityFlushAll failed (%d)\n", (int)r);
    if (fclose(out) != 0) perror("kernel_trace: closing the trace");
    out = NULL;
}

int InitializeInjection(void) {
    const char *path = getenv("TRACE_OUT");
    if (!path) path = "/tmp/trace.csv";
    if (!(out = fopen(path, "w"))) {
        perror(path);
        return 0;
    }
    CUPTI_OK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
    atexit(finish);
    return 1;
}
