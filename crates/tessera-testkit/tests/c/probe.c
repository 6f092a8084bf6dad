/* A C application that reports raw CK_RV values (the vendor codes that wrappers hide):
 * C_Initialize, C_OpenSession on the first slot with a token, C_Login as user with argv[2]. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: probe MODULE PIN\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    fn_initialize initialize = (fn_initialize)dlsym(module, "C_Initialize");
    fn_get_slot_list slots = (fn_get_slot_list)dlsym(module, "C_GetSlotList");
    fn_open_session open_session = (fn_open_session)dlsym(module, "C_OpenSession");
    fn_login login = (fn_login)dlsym(module, "C_Login");
    CK_ULONG list[8], count = 8, session = 0;
    printf("initialize=0x%lx\n", initialize(NULL));
    printf("slots=0x%lx\n", slots(1, list, &count));
    CK_RV rv = open_session(list[0], 6 /* CKF_SERIAL_SESSION | CKF_RW_SESSION */, NULL, NULL, &session);
    printf("open=0x%lx\n", rv);
    if (rv == 0) {
        printf("login=0x%lx\n", login(session, 1 /* CKU_USER */, (unsigned char *)argv[2], strlen(argv[2])));
    }
    return 0;
}
