/* A C application that keeps SIGPIPE's default action (as most do): opens a session, prints
 * "ready", waits for a line on standard input (the test stops the device meanwhile), then
 * calls C_GenerateRandom on the connection the device closed and prints its return value.
 * A library that wrote there with a plain writev would end this process with SIGPIPE. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_generate_random)(CK_ULONG, unsigned char *, CK_ULONG);

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: after_close MODULE\n"); return 2; }
    signal(SIGPIPE, SIG_DFL);
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    fn_initialize initialize = (fn_initialize)dlsym(module, "C_Initialize");
    fn_get_slot_list slots = (fn_get_slot_list)dlsym(module, "C_GetSlotList");
    fn_open_session open_session = (fn_open_session)dlsym(module, "C_OpenSession");
    fn_generate_random random = (fn_generate_random)dlsym(module, "C_GenerateRandom");
    CK_ULONG list[8], count = 8, session = 0;
    unsigned char buffer[32];
    char line[16];
    CK_RV rv;
    if ((rv = initialize(NULL)) != 0) { fprintf(stderr, "C_Initialize 0x%lx\n", rv); return 4; }
    if ((rv = slots(1, list, &count)) != 0 || count == 0) { fprintf(stderr, "slots 0x%lx\n", rv); return 5; }
    if ((rv = open_session(list[0], 4, NULL, NULL, &session)) != 0) { fprintf(stderr, "open 0x%lx\n", rv); return 6; }
    if ((rv = random(session, buffer, sizeof buffer)) != 0) { fprintf(stderr, "random 0x%lx\n", rv); return 7; }
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) { return 8; }
    rv = random(session, buffer, sizeof buffer);
    printf("random 0x%lx\n", rv);
    fflush(stdout);
    return 0;
}
