/* An application that decrypts a file with an AES key found by its label (CKM_AES_ECB, one
 * C_Decrypt), then, at each line on standard input, reports and goes on: the first line wipes
 * its output buffer, the second ends it. The test scans its memory in between.
 * Usage: decrypt_wipe MODULE PIN LABEL FILE */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { CK_ULONG type; void *value; CK_ULONG len; } CK_ATTRIBUTE;
typedef struct { CK_ULONG mechanism; void *parameter; CK_ULONG len; } CK_MECHANISM;
typedef CK_RV (*fn_initialize)(void *);
typedef CK_RV (*fn_get_slot_list)(unsigned char, CK_ULONG *, CK_ULONG *);
typedef CK_RV (*fn_open_session)(CK_ULONG, CK_ULONG, void *, void *, CK_ULONG *);
typedef CK_RV (*fn_login)(CK_ULONG, CK_ULONG, unsigned char *, CK_ULONG);
typedef CK_RV (*fn_find_init)(CK_ULONG, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*fn_find)(CK_ULONG, CK_ULONG *, CK_ULONG, CK_ULONG *);
typedef CK_RV (*fn_find_final)(CK_ULONG);
typedef CK_RV (*fn_decrypt_init)(CK_ULONG, CK_MECHANISM *, CK_ULONG);
typedef CK_RV (*fn_decrypt)(CK_ULONG, unsigned char *, CK_ULONG, unsigned char *, CK_ULONG *);

#define CKA_LABEL 3
#define CKM_AES_ECB 0x1081

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: decrypt_wipe MODULE PIN LABEL FILE\n"); return 2; }
    void *module = dlopen(argv[1], RTLD_NOW);
    if (!module) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    FILE *file = fopen(argv[4], "rb");
    if (!file) { perror(argv[4]); return 4; }
    fseek(file, 0, SEEK_END);
    CK_ULONG len = (CK_ULONG)ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *in = malloc(len), *out = malloc(len);
    if (!in || !out || fread(in, 1, len, file) != len) { fprintf(stderr, "cannot read\n"); return 4; }
    fclose(file);

    CK_ULONG list[8], count = 8, session = 0, key = 0, found = 0, out_len = len;
    CK_ATTRIBUTE label = { CKA_LABEL, argv[3], strlen(argv[3]) };
    CK_MECHANISM ecb = { CKM_AES_ECB, NULL, 0 };
    CK_RV rv = ((fn_initialize)dlsym(module, "C_Initialize"))(NULL);
    if (!rv) rv = ((fn_get_slot_list)dlsym(module, "C_GetSlotList"))(1, list, &count);
    if (!rv) rv = ((fn_open_session)dlsym(module, "C_OpenSession"))(list[0], 4, NULL, NULL, &session);
    if (!rv) rv = ((fn_login)dlsym(module, "C_Login"))(session, 1, (unsigned char *)argv[2], strlen(argv[2]));
    if (!rv) rv = ((fn_find_init)dlsym(module, "C_FindObjectsInit"))(session, &label, 1);
    if (!rv) rv = ((fn_find)dlsym(module, "C_FindObjects"))(session, &key, 1, &found);
    if (!rv) rv = ((fn_find_final)dlsym(module, "C_FindObjectsFinal"))(session);
    if (!rv && found != 1) { fprintf(stderr, "key not found\n"); return 5; }
    if (!rv) rv = ((fn_decrypt_init)dlsym(module, "C_DecryptInit"))(session, &ecb, key);
    if (!rv) rv = ((fn_decrypt)dlsym(module, "C_Decrypt"))(session, in, len, out, &out_len);
    printf("decrypted=0x%lx len=%lu\n", rv, out_len);
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 0;
    /* The application's own copy goes: what is left is the library's. */
    memset(out, 0, len);
    __asm__ __volatile__("" : : "r"(out) : "memory");
    printf("wiped\n");
    fflush(stdout);
    fgets(line, sizeof line, stdin);
    return 0;
}
