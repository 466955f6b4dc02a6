/* nvml_meter.h — the card's energy counter, SM clock and clock-event reasons through NVML, for
 * bench/ programs that measure kernels the way a training step runs them: long enough at full load
 * that the card sits at its power cap (docs/performance.md: a step's GEMMs cost their energy).
 *
 * NVML comes with the driver (libnvidia-ml.so.1), not the toolkit, so it is opened with dlopen and
 * its few entry points declared here; the card is found by the CUDA device's PCI bus id, as NVML
 * may number cards otherwise. A benchmark helper, header only: meter_open returns false with a
 * message in why when NVML or the card is missing; callers then measure time alone. */
#ifndef AN_BENCH_NVML_METER_H
#define AN_BENCH_NVML_METER_H

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>

typedef struct {
    void *lib;
    void *dev; /* nvmlDevice_t */
    int (*energy)(void *dev, unsigned long long *mj);                  /* nvmlDeviceGetTotalEnergyConsumption */
    int (*clock)(void *dev, int type, unsigned *mhz);                   /* nvmlDeviceGetClockInfo */
    int (*reasons)(void *dev, unsigned long long *mask);                /* nvmlDeviceGetCurrentClocksEventReasons */
} Meter;

enum { METER_CLOCK_SM = 1, METER_REASON_SW_POWER_CAP = 0x4 };

/* Opens NVML on the card with this PCI bus id (cudaDeviceGetPCIBusId's form). */
static inline bool meter_open(Meter *m, const char *pci_bus_id, char *why, size_t why_size) {
    m->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!m->lib) {
        snprintf(why, why_size, "no libnvidia-ml.so.1: %s", dlerror());
        return false;
    }
    int (*init)(void) = (int (*)(void))dlsym(m->lib, "nvmlInit_v2");
    int (*by_bus)(const char *, void **) = (int (*)(const char *, void **))dlsym(m->lib, "nvmlDeviceGetHandleByPciBusId_v2");
    m->energy = (int (*)(void *, unsigned long long *))dlsym(m->lib, "nvmlDeviceGetTotalEnergyConsumption");
    m->clock = (int (*)(void *, int, unsigned *))dlsym(m->lib, "nvmlDeviceGetClockInfo");
    m->reasons = (int (*)(void *, unsigned long long *))dlsym(m->lib, "nvmlDeviceGetCurrentClocksEventReasons");
    if (!m->reasons) /* the older name of the same call */
        m->reasons = (int (*)(void *, unsigned long long *))dlsym(m->lib, "nvmlDeviceGetCurrentClocksThrottleReasons");
    int rc = -1;
    if (!init || !by_bus || !m->energy || !m->clock || !m->reasons)
        snprintf(why, why_size, "libnvidia-ml.so.1 lacks an entry point this meter uses");
    else if ((rc = init()) != 0 || (rc = by_bus(pci_bus_id, &m->dev)) != 0)
        snprintf(why, why_size, "NVML error %d opening the card at %s", rc, pci_bus_id);
    else {
        unsigned long long mj;
        if ((rc = m->energy(m->dev, &mj)) != 0)
            snprintf(why, why_size, "NVML error %d reading the energy counter (needs Volta or later)", rc);
    }
    if (rc != 0) {
        dlclose(m->lib);
        m->lib = NULL;
        return false;
    }
    return true;
}

/* Millijoules since the driver loaded; false on an NVML error. */
static inline bool meter_energy_mj(const Meter *m, unsigned long long *mj) { return m->energy(m->dev, mj) == 0; }

/* The SM clock now, in MHz, and whether the software power cap holds it down. */
static inline bool meter_sample(const Meter *m, unsigned *mhz, bool *capped) {
    unsigned long long mask = 0;
    if (m->clock(m->dev, METER_CLOCK_SM, mhz) != 0 || m->reasons(m->dev, &mask) != 0) return false;
    *capped = (mask & METER_REASON_SW_POWER_CAP) != 0;
    return true;
}

#endif
