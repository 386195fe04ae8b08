/* dpcoord's NVTX shim: three functions over NVIDIA's header-only NVTX v3 C API.
 *
 * NVTX v3 loads nothing until its first call, and then only the tool named by
 * NVTX_INJECTION64_PATH (set by nsys or ncu when they launch the process); without one every
 * NVTX call becomes a no-op. dpcoord calls these functions only when that variable is set
 * (nvtx.rs), so a process without a profiler never enters NVTX at all.
 * The names start with dpcoord_, not dp_, so exports.map keeps them out of the .so's
 * dynamic symbol table. */

#include <stdint.h>

#include "nvtx3/nvToolsExt.h"

/* Creates (or finds: NVTX returns one handle per name) the domain named `name`. */
void* dpcoord_nvtx_domain_create(const char* name) {
    return (void*)nvtxDomainCreateA(name);
}

/* Opens a range on this thread in `domain` with an ASCII message and an ARGB colour. */
void dpcoord_nvtx_range_push(void* domain, const char* message, uint32_t argb) {
    nvtxEventAttributes_t attrs = {0};
    attrs.version = NVTX_VERSION;
    attrs.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attrs.colorType = NVTX_COLOR_ARGB;
    attrs.color = argb;
    attrs.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attrs.message.ascii = message;
    nvtxDomainRangePushEx((nvtxDomainHandle_t)domain, &attrs);
}

/* Closes the innermost range this thread opened in `domain`. */
void dpcoord_nvtx_range_pop(void* domain) {
    nvtxDomainRangePop((nvtxDomainHandle_t)domain);
}
