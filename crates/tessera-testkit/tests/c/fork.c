/* A C application that loads the module, forks, and checks that the child must (and can)
 * initialise its own library state while the parent's session keeps working. It forks twice:
 * with fork(), and with the raw system call, which runs no pthread_atfork handlers (as glibc's
 * _Fork() and clone-based helpers do not either). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef void *CK_VOID_PTR;
typedef CK_RV (*fn_initialize)(CK_VOID_PTR);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, CK_VOID_PTR, CK_VOID_PTR, CK_ULONG *);
typedef CK_RV (*fn_generate_random)(CK_ULONG, unsigned char *, CK_ULONG);

#define CKF_SERIAL_SESSION 4UL
#define CKR_CRYPTOKI_NOT_INITIALIZED 0x190UL

static void *symbol(void *module, const char *name) {
    void *f = dlsym(module, name);
    if (!f) { fprintf(stderr, "missing %s\n", name); exit(10); }
    return f;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: fork MODULE\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    fn_initialize initialize = (fn_initialize)symbol(module, "C_Initialize");
    fn_get_slot_list slots = (fn_get_slot_list)symbol(module, "C_GetSlotList");
    fn_open_session open_session = (fn_open_session)symbol(module, "C_OpenSession");
    fn_generate_random random = (fn_generate_random)symbol(module, "C_GenerateRandom");
    unsigned char buffer[32];
    CK_ULONG session = 0, count = 8, list[8];
    CK_RV rv;
    if ((rv = initialize(NULL)) != 0) { fprintf(stderr, "parent C_Initialize 0x%lx\n", rv); return 4; }
    if ((rv = slots(1, list, &count)) != 0 || count == 0) { fprintf(stderr, "parent slots 0x%lx\n", rv); return 5; }
    if ((rv = open_session(list[0], CKF_SERIAL_SESSION, NULL, NULL, &session)) != 0) {
        fprintf(stderr, "parent C_OpenSession 0x%lx\n", rv); return 6;
    }
    for (int kind = 0; kind < 2; kind++) {
        const char *how = kind == 0 ? "fork()" : "the raw fork system call";
        pid_t child;
        if (kind == 0) {
            child = fork();
        } else {
#ifdef SYS_fork
            child = (pid_t)syscall(SYS_fork);
#else
            child = (pid_t)syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
#endif
        }
        if (child < 0) { fprintf(stderr, "%s failed\n", how); return 9; }
        if (child == 0) {
            count = 8;
            rv = slots(1, list, &count);
            if (rv != CKR_CRYPTOKI_NOT_INITIALIZED) { fprintf(stderr, "child of %s before init: 0x%lx\n", how, rv); _exit(20); }
            if ((rv = initialize(NULL)) != 0) { fprintf(stderr, "child C_Initialize 0x%lx\n", rv); _exit(21); }
            CK_ULONG own = 0;
            count = 8;
            if ((rv = slots(1, list, &count)) != 0) { fprintf(stderr, "child slots 0x%lx\n", rv); _exit(22); }
            if ((rv = open_session(list[0], CKF_SERIAL_SESSION, NULL, NULL, &own)) != 0) { fprintf(stderr, "child open 0x%lx\n", rv); _exit(23); }
            if ((rv = random(own, buffer, sizeof buffer)) != 0) { fprintf(stderr, "child random 0x%lx\n", rv); _exit(24); }
            printf("child of %s ok\n", how);
            fflush(stdout);
            _exit(0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "child of %s failed: %d\n", how, status); return 7; }
        /* The parent's session and connection are untouched by the child. */
        if ((rv = random(session, buffer, sizeof buffer)) != 0) { fprintf(stderr, "parent random after %s 0x%lx\n", how, rv); return 8; }
    }
    printf("parent ok\n");
    return 0;
}
