// kernels/emu/entries.h — a kernel's entry in the CUDA emulator: its name, a thunk that calls it
// with CUDA's launch-argument convention (args[i] points at argument i), and its signature's
// arity and pointer positions, which kiln_emu_launch checks against what the host passes.
// build.rs writes one table of these per kernel file (`kiln_emu_module_<file>`).
#pragma once

#include <stdint.h>

#include <cstddef>
#include <type_traits>
#include <utility>

namespace kiln_emu {

struct KernelEntry {
    const char* name;
    void (*invoke)(void** args);
    int nargs;
    uint64_t ptr_mask;  // bit i: argument i is a pointer
};

template <typename... A, size_t... I>
inline void invoke_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
constexpr uint64_t pointer_mask(void (*)(A...)) {
    constexpr bool is_ptr[] = {std::is_pointer<A>::value..., false};
    uint64_t m = 0;
    for (size_t i = 0; i < sizeof...(A); ++i) m |= (uint64_t)is_ptr[i] << i;
    return m;
}

template <typename... A>
constexpr int arity(void (*)(A...)) {
    return (int)sizeof...(A);
}

template <auto F>
void invoke(void** args) {
    invoke_with(F, args, std::make_index_sequence<arity(F)>{});
}

}  // namespace kiln_emu

#define KILN_EMU_ENTRY(name)                                                            \
    kiln_emu::KernelEntry {                                                             \
        #name, &kiln_emu::invoke<&name>, kiln_emu::arity(&name), kiln_emu::pointer_mask(&name) \
    }
