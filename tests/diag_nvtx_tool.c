/* A stand-in for nsys's NVTX injection library, for the NVTX tests (src/diag/nvtx.rs):
 * NVTX v3 dlopens the library named by NVTX_INJECTION64_PATH and calls
 * InitializeInjectionNvtx2, which fills the slots of the calls it implements. This one
 * records domain creation, pushes and pops, one line each, into $DPCOORD_TEST_NVTX_OUT. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVTX_NO_IMPL /* the types only: a tool implements the calls */
#include "nvtx3/nvToolsExt.h"

static void record(const char* a, const char* b, const char* c) {
    const char* path = getenv("DPCOORD_TEST_NVTX_OUT");
    FILE* out = path ? fopen(path, "a") : NULL;
    if (!out) return;
    fprintf(out, "%s%s%s%s%s\n", a, b ? " " : "", b ? b : "", c ? " " : "", c ? c : "");
    fclose(out);
}

/* One domain is enough for the tests: its handle is the address of its name. */
static char domain_name[64];

static nvtxDomainHandle_t domain_create(const char* name) {
    snprintf(domain_name, sizeof domain_name, "%s", name);
    record("domain", name, NULL);
    return (nvtxDomainHandle_t)domain_name;
}

static const char* name_of(nvtxDomainHandle_t domain) {
    return domain == (nvtxDomainHandle_t)domain_name ? domain_name : "(default)";
}

static int range_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t* attrs) {
    int ascii = attrs->messageType == NVTX_MESSAGE_TYPE_ASCII;
    record("push", name_of(domain), ascii ? attrs->message.ascii : "(not ascii)");
    return 0;
}

static int range_pop(nvtxDomainHandle_t domain) {
    record("pop", name_of(domain), NULL);
    return 0;
}

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
    const NvtxExportTableCallbacks* callbacks =
        (const NvtxExportTableCallbacks*)get_export_table(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable table = 0;
    unsigned int size = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size) ||
        size <= NVTX_CBID_CORE2_DomainCreateA) {
        return 0;
    }
    *table[NVTX_CBID_CORE2_DomainCreateA] = (NvtxFunctionPointer)domain_create;
    *table[NVTX_CBID_CORE2_DomainRangePushEx] = (NvtxFunctionPointer)range_push;
    *table[NVTX_CBID_CORE2_DomainRangePop] = (NvtxFunctionPointer)range_pop;
    record("init", NULL, NULL);
    return 1;
}
