/* A host application: whether it is dumpable (prctl PR_GET_DUMPABLE) and its soft core size
 * limit before and after C_Initialize of the module argv[1]. The soft limit is raised to the
 * hard one first, as `ulimit -c unlimited` would. */
#include <dlfcn.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>

typedef unsigned long CK_RV;
typedef CK_RV (*fn_initialize)(void *);

static void report(const char *when) {
    struct rlimit core;
    getrlimit(RLIMIT_CORE, &core);
    printf("%s dumpable=%d core=%s\n", when, prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
           core.rlim_cur == 0 ? "0" : "nonzero");
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: dumpable MODULE\n"); return 2; }
    struct rlimit core;
    getrlimit(RLIMIT_CORE, &core);
    core.rlim_cur = core.rlim_max;
    setrlimit(RLIMIT_CORE, &core);
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    fn_initialize initialize = (fn_initialize)dlsym(module, "C_Initialize");
    report("before");
    printf("initialize=0x%lx\n", initialize(NULL));
    report("after");
    return 0;
}
