// kernels/emu/runtime.cpp — CUDA's execution model on the CPU: kiln's CUDA emulator.
//
// Implements:
//   kiln_emu_launch        run every block of a grid (blocks spread over worker OS threads); a
//                          block's threads are fibers on one worker, so __syncthreads is a real
//                          barrier and warp collectives really wait for their lanes
//   kiln_emu_alloc/free    device memory: one host allocation per buffer (256-byte aligned), so
//                          AddressSanitizer sees out-of-bounds global accesses; a registry of
//                          live allocations lets cp.async and the emulated cuBLASLt check extents
//   the collectives        shfl, ldmatrix, mma, following the PTX ISA (see intrinsics.cuh)
//   cp.async               queued per thread, the destination poisoned (0xFF bytes: NaN in bf16
//                          and fp32) until the wait_group that completes it
//
// Scheduling. A block runs its lowest-numbered runnable thread until it blocks (barrier,
// collective) or exits. So warp 0 runs as far ahead of warp 1 as the code allows: a missing
// __syncthreads lets one warp overwrite (or poison, through cp.async) a shared tile another
// warp still reads, and the result goes wrong instead of being right by luck.
//
// Faults (the first one ends the launch; kiln_emu_launch returns it as one line naming the
// kernel, block, thread and source line): a barrier that can never complete (deadlock, or
// threads that exited), lanes of a warp at different collectives or with different masks, a
// collective whose mask leaves out a lane, misaligned cp.async / ldmatrix / vector accesses,
// ldmatrix or cp.async destinations outside shared memory, cp.async sources outside any device
// allocation, shared memory over the limits (48 KiB without the opt-in attribute, 227 KiB in
// all), grid or block dimensions over CUDA's limits, argument lists that do not match the
// kernel's signature.
//
// Not modelled: speed, bank conflicts, registers, the GPU's weaker memory ordering between
// blocks (blocks on different workers see each other's writes in the host's order).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"
#include "../intrinsics.cuh"
#include "entries.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define KILN_ASAN 1
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace kiln_emu {

thread_local const ThreadCoords* tls_thread = nullptr;
thread_local const BlockCoords* tls_block = nullptr;

// ---------------------------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------------------------

static std::shared_mutex g_alloc_mu;
static std::map<uintptr_t, size_t> g_allocs;  // base -> bytes

static bool global_extent_ok(const void* p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    std::shared_lock<std::shared_mutex> lock(g_alloc_mu);
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return false;
    --it;
    return a >= it->first && a + bytes <= it->first + it->second;
}

// ---------------------------------------------------------------------------------------------
// Fibers
// ---------------------------------------------------------------------------------------------

#if defined(__x86_64__)
// swap(save, load): push the callee-saved registers and the FPU control words, store the stack
// pointer in *save, load `load`, pop and return into the other context.
extern "C" void kiln_emu_swap(void** save, void* load);
extern "C" void kiln_emu_fiber_entry();
extern "C" void kiln_emu_fiber_start();
asm(R"(
.text
.globl kiln_emu_swap
.type kiln_emu_swap,@function
kiln_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw (%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    fldcw (%rsp)
    ldmxcsr 8(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size kiln_emu_swap,.-kiln_emu_swap
.globl kiln_emu_fiber_entry
.type kiln_emu_fiber_entry,@function
kiln_emu_fiber_entry:
    call kiln_emu_fiber_start
    ud2
.size kiln_emu_fiber_entry,.-kiln_emu_fiber_entry
)");

struct Context {
    void* sp = nullptr;
};
// A fresh context that starts in kiln_emu_fiber_start on the stack [lo, lo + size).
static void make_context(Context& c, char* lo, size_t size) {
    uintptr_t top = ((uintptr_t)(lo + size)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 16 - 72);
    sp[0] = 0x037f;  // x87 control word
    sp[1] = 0x1f80;  // mxcsr
    for (int i = 2; i < 8; ++i) sp[i] = 0;  // r15 r14 r13 r12 rbx rbp
    sp[8] = (uint64_t)&kiln_emu_fiber_entry;
    c.sp = sp;
}
static inline void swap_context(Context& from, Context& to) { kiln_emu_swap(&from.sp, to.sp); }
#else
extern "C" void kiln_emu_fiber_start();
struct Context {
    ucontext_t uc;
};
static void make_context(Context& c, char* lo, size_t size) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, (void (*)())kiln_emu_fiber_start, 0);
}
static inline void swap_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

#if defined(KILN_ASAN)
static constexpr size_t kStackBytes = 512 << 10;
#else
static constexpr size_t kStackBytes = 128 << 10;
#endif
static constexpr size_t kGuardBytes = 4096;

// Fiber stacks (with a guard page below each) kept for reuse across launches.
struct StackPool {
    std::mutex mu;
    std::vector<char*> free;
    char* take() {
        {
            std::lock_guard<std::mutex> l(mu);
            if (!free.empty()) {
                char* s = free.back();
                free.pop_back();
                return s;
            }
        }
        void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "kiln CUDA emulator: cannot map a fiber stack\n");
            abort();
        }
        mprotect(p, kGuardBytes, PROT_NONE);
        return (char*)p + kGuardBytes;
    }
    void give(char* s) {
        std::lock_guard<std::mutex> l(mu);
        free.push_back(s);
    }
};
static StackPool g_stacks;

// ---------------------------------------------------------------------------------------------
// Launch, block and thread state
// ---------------------------------------------------------------------------------------------

constexpr size_t kSharedNoOptIn = 48 << 10;
constexpr size_t kSharedMax = 227 << 10;  // sm_90 opt-in maximum per block

struct Launch {
    const KernelEntry* kernel;
    void** args;
    dim3 grid, block;
    size_t dyn_bytes;
    size_t shared_limit;  // static + dynamic
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string error;
};

enum class State : uint8_t { Ready, AtBarrier, AtCollective, Exited };

struct Pending {
    void* dst;
    const void* src;
    int cp_size, src_size;
};

struct Fiber {
    Context ctx;
    char* stack = nullptr;
    ThreadCoords coords;
    int tid = 0;
    State state = State::Ready;
    const void* cin = nullptr;
    void* cout = nullptr;
    std::vector<Pending> uncommitted;
    std::deque<std::vector<Pending>> groups;
};

struct WarpState {
    bool active = false;
    const CollectiveOp* op = nullptr;
    const char* file = nullptr;
    int line = 0;
    uint32_t mask = 0;
    uint32_t arrived = 0;
    uint32_t exited = 0;  // lanes that returned from the kernel
};

struct SharedAlloc {
    const void* key;
    char* ptr;
    size_t bytes;
};

struct Block {
    Launch* launch;
    BlockCoords coords;
    std::vector<Fiber>* fibers;
    int nthreads = 0;
    int nwarps = 0;
    std::vector<WarpState> warps;
    std::vector<uint64_t> ready;  // bitset
    int exited = 0;
    int at_barrier = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    char* dyn = nullptr;
    std::vector<SharedAlloc> statics;
    size_t static_bytes = 0;
    Context sched;
    bool aborted = false;
};

thread_local Block* tls_blk = nullptr;
thread_local Fiber* tls_fib = nullptr;

static void set_ready(Block& b, int t) { b.ready[t >> 6] |= 1ull << (t & 63); }
static void clear_ready(Block& b, int t) { b.ready[t >> 6] &= ~(1ull << (t & 63)); }

static std::string coords_str() {
    char buf[160];
    const BlockCoords& bc = tls_blk->coords;
    if (tls_fib) {
        const dim3& t = tls_fib->coords.thread_idx;
        snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", bc.block_idx.x,
                 bc.block_idx.y, bc.block_idx.z, t.x, t.y, t.z);
    } else {
        snprintf(buf, sizeof buf, "block (%u,%u,%u)", bc.block_idx.x, bc.block_idx.y,
                 bc.block_idx.z);
    }
    return buf;
}

static const char* base_name(const char* file) {
    const char* s = strrchr(file, '/');
    return s ? s + 1 : file;
}

// Record the launch's first error.
static void record_error(Launch& l, const std::string& msg) {
    std::lock_guard<std::mutex> g(l.err_mu);
    if (l.error.empty()) l.error = msg;
    l.failed.store(true);
}

// Leave the running fiber for good and end the block.
[[noreturn]] static void abort_fiber() {
    Block* b = tls_blk;
    Fiber* f = tls_fib;
    b->aborted = true;
    f->state = State::Exited;
#if defined(KILN_ASAN)
    __sanitizer_start_switch_fiber(nullptr, nullptr, 0);
#endif
    swap_context(f->ctx, b->sched);
    __builtin_unreachable();
}

void fault(const char* file, int line, const char* fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::string s = std::string(tls_blk->launch->kernel->name) + ": " + coords_str() + " at " +
                    base_name(file) + ":" + std::to_string(line) + ": " + msg;
    record_error(*tls_blk->launch, s);
    abort_fiber();
}

// Give control back to the scheduler (the fiber's state says why).
static void yield_to_scheduler() {
    Block* b = tls_blk;
    Fiber* f = tls_fib;
#if defined(KILN_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, nullptr, 0);
#endif
    swap_context(f->ctx, b->sched);
#if defined(KILN_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    tls_fib = f;
    tls_thread = &f->coords;
    if (b->aborted) abort_fiber();
}

// ---------------------------------------------------------------------------------------------
// Barrier
// ---------------------------------------------------------------------------------------------

void syncthreads(const char* file, int line) {
    Block& b = *tls_blk;
    Fiber& f = *tls_fib;
    if (b.exited > 0) {
        fault(file, line,
              "__syncthreads reached after %d thread(s) of the block exited: the barrier can "
              "never complete",
              b.exited);
    }
    if (b.at_barrier > 0 &&
        (b.bar_line != line || (b.bar_file != file && strcmp(b.bar_file, file) != 0))) {
        fault(file, line, "threads of one block wait at different __syncthreads (%s:%d and here)",
              base_name(b.bar_file), b.bar_line);
    }
    b.bar_file = file;
    b.bar_line = line;
    if (++b.at_barrier == b.nthreads) {
        b.at_barrier = 0;
        for (auto& g : *b.fibers) {
            if (g.state == State::AtBarrier) {
                g.state = State::Ready;
                set_ready(b, g.tid);
            }
        }
        return;  // the last arrival goes on without a switch
    }
    f.state = State::AtBarrier;
    clear_ready(b, f.tid);
    yield_to_scheduler();
}

// ---------------------------------------------------------------------------------------------
// Warp collectives
// ---------------------------------------------------------------------------------------------

static const char* collective_name(const CollectiveOp* op) {
    switch (op->kind) {
        case Collective::Shfl: return "shfl";
        case Collective::LdMatrix: return op->variant ? "ldmatrix.trans" : "ldmatrix";
        case Collective::Mma: return "mma";
    }
    return "?";
}

void warp_collective(const CollectiveOp& op, uint32_t mask, const void* in, void* out,
                     const char* file, int line) {
    Block& b = *tls_blk;
    Fiber& f = *tls_fib;
    const int warp = f.tid >> 5;
    const int lane = f.tid & 31;
    // Lanes past the end of a partial last warp do not exist.
    const int lanes_here = std::min(32, b.nthreads - warp * 32);
    const uint32_t existing = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1);
    if (!(mask >> lane & 1)) {
        fault(file, line, "%s: the calling lane %d is not in the mask 0x%08x",
              collective_name(&op), lane, mask);
    }
    if (mask & ~existing) {
        fault(file, line, "%s: mask 0x%08x names lanes that do not exist in this warp",
              collective_name(&op), mask);
    }
    WarpState& w = b.warps[warp];
    if (w.active) {
        if (w.op != &op || w.line != line || w.mask != mask ||
            (w.file != file && strcmp(w.file, file) != 0)) {
            fault(file, line,
                  "lanes of warp %d at different collectives: %s at %s:%d (mask 0x%08x) and %s "
                  "here (mask 0x%08x)",
                  warp, collective_name(w.op), base_name(w.file), w.line, w.mask,
                  collective_name(&op), mask);
        }
    } else {
        // A lane of the mask that already exited can never arrive.
        if (mask & w.exited) {
            fault(file, line, "%s: lane %d of the mask has exited", collective_name(&op),
                  __builtin_ctz(mask & w.exited));
        }
        w.active = true;
        w.op = &op;
        w.file = file;
        w.line = line;
        w.mask = mask;
        w.arrived = 0;
    }
    f.cin = in;
    f.cout = out;
    w.arrived |= 1u << lane;
    if (w.arrived == mask) {
        const void* ins[32] = {};
        void* outs[32] = {};
        Fiber* lanes = b.fibers->data() + warp * 32;
        for (uint32_t m = mask; m; m &= m - 1) {
            const int l = __builtin_ctz(m);
            ins[l] = lanes[l].cin;
            outs[l] = lanes[l].cout;
        }
        w.active = false;
        op.compute(op.variant, ins, outs, mask, file, line);
        for (uint32_t m = mask & ~(1u << lane); m; m &= m - 1) {
            const int l = __builtin_ctz(m);
            lanes[l].state = State::Ready;
            set_ready(b, warp * 32 + l);
        }
        return;
    }
    f.state = State::AtCollective;
    clear_ready(b, f.tid);
    yield_to_scheduler();
}

void shfl_xor_all(int, const void* const* in, void* const* out, uint32_t mask, const char* file,
                  int line) {
    for (int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        const KilnShflIn* mine = static_cast<const KilnShflIn*>(in[l]);
        const int src = l ^ (mine->lane_mask & 31);
        if (!(mask >> src & 1)) {
            fault(file, line, "shfl_xor: lane %d reads lane %d, which is not in the mask 0x%08x", l,
                  src, mask);
        }
        *static_cast<float*>(out[l]) = static_cast<const KilnShflIn*>(in[src])->v;
    }
}

static uint16_t load_b16(const char* p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

void ldmatrix_all(int trans, const void* const* in, void* const* out, uint32_t mask,
                  const char* file, int line) {
    if (mask != 0xffffffffu) fault(file, line, "ldmatrix.sync.aligned needs all 32 lanes");
    const char* rows[32];
    for (int l = 0; l < 32; ++l) {
        rows[l] = *static_cast<const char* const*>(in[l]);
        if ((uintptr_t)rows[l] % 16 != 0) {
            fault(file, line, "ldmatrix: lane %d's row address %p is not 16-byte aligned", l,
                  (const void*)rows[l]);
        }
        if (!in_shared(rows[l], 16)) {
            fault(file, line, "ldmatrix: lane %d's row address %p is outside shared memory", l,
                  (const void*)rows[l]);
        }
    }
    for (int l = 0; l < 32; ++l) {
        uint32_t* r = static_cast<uint32_t*>(out[l]);
        for (int j = 0; j < 4; ++j) {
            uint16_t lo, hi;
            if (!trans) {
                const char* row = rows[8 * j + (l >> 2)];
                lo = load_b16(row + 2 * (2 * (l & 3)));
                hi = load_b16(row + 2 * (2 * (l & 3) + 1));
            } else {
                lo = load_b16(rows[8 * j + 2 * (l & 3)] + 2 * (l >> 2));
                hi = load_b16(rows[8 * j + 2 * (l & 3) + 1] + 2 * (l >> 2));
            }
            r[j] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
}

static float bf16_lo(uint32_t v) { return __bfloat162float(__nv_bfloat16{(uint16_t)(v & 0xffff)}); }
static float bf16_hi(uint32_t v) { return __bfloat162float(__nv_bfloat16{(uint16_t)(v >> 16)}); }

void mma_all(int, const void* const* in, void* const* out, uint32_t mask, const char* file,
             int line) {
    if (mask != 0xffffffffu) fault(file, line, "mma.sync.aligned needs all 32 lanes");
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const KilnMmaIn& x = *static_cast<const KilnMmaIn*>(in[l]);
        const int g = l >> 2, t = l & 3;
        A[g][2 * t] = bf16_lo(x.a[0]);
        A[g][2 * t + 1] = bf16_hi(x.a[0]);
        A[g + 8][2 * t] = bf16_lo(x.a[1]);
        A[g + 8][2 * t + 1] = bf16_hi(x.a[1]);
        A[g][2 * t + 8] = bf16_lo(x.a[2]);
        A[g][2 * t + 9] = bf16_hi(x.a[2]);
        A[g + 8][2 * t + 8] = bf16_lo(x.a[3]);
        A[g + 8][2 * t + 9] = bf16_hi(x.a[3]);
        B[2 * t][g] = bf16_lo(x.b[0]);
        B[2 * t + 1][g] = bf16_hi(x.b[0]);
        B[2 * t + 8][g] = bf16_lo(x.b[1]);
        B[2 * t + 9][g] = bf16_hi(x.b[1]);
        C[g][2 * t] = x.c[0];
        C[g][2 * t + 1] = x.c[1];
        C[g + 8][2 * t] = x.c[2];
        C[g + 8][2 * t + 1] = x.c[3];
    }
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        float* d = static_cast<float*>(out[l]);
        const int rows[4] = {g, g, g + 8, g + 8};
        const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int i = 0; i < 4; ++i) {
            // bf16 products are exact in fp32; the sum runs in k order.
            float acc = 0.0f;
            for (int k = 0; k < 16; ++k) acc += A[rows[i]][k] * B[k][cols[i]];
            d[i] = C[rows[i]][cols[i]] + acc;
        }
    }
}

void atomic_add_f32(float* p, float v) {
    uint32_t* u = reinterpret_cast<uint32_t*>(p);
    uint32_t old = __atomic_load_n(u, __ATOMIC_RELAXED);
    for (;;) {
        float f;
        memcpy(&f, &old, 4);
        f += v;
        uint32_t nw;
        memcpy(&nw, &f, 4);
        if (__atomic_compare_exchange_n(u, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------

bool in_shared(const void* p, size_t bytes) {
    const Block& b = *tls_blk;
    const char* c = static_cast<const char*>(p);
    if (b.dyn && c >= b.dyn && c + bytes <= b.dyn + b.launch->dyn_bytes) return true;
    for (const SharedAlloc& s : b.statics) {
        if (c >= s.ptr && c + bytes <= s.ptr + s.bytes) return true;
    }
    return false;
}

static char* alloc_poisoned(size_t bytes, size_t align) {
    void* p = nullptr;
    if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) {
        fprintf(stderr, "kiln CUDA emulator: out of host memory\n");
        abort();
    }
    memset(p, 0xff, bytes);
    return static_cast<char*>(p);
}

void* dynamic_shared(const char*, int) { return tls_blk->dyn; }

void* static_shared(const void* key, size_t bytes, const char* name, const char* file, int line) {
    Block& b = *tls_blk;
    for (const SharedAlloc& s : b.statics) {
        if (s.key == key) return s.ptr;
    }
    b.static_bytes += bytes;
    if (b.static_bytes > kSharedNoOptIn) {
        fault(file, line, "static shared memory of %zu bytes (with `%s`) is above 48 KiB",
              b.static_bytes, name);
    }
    if (b.static_bytes + b.launch->dyn_bytes > b.launch->shared_limit) {
        fault(file, line,
              "shared memory of %zu bytes (static, with `%s`) + %zu (dynamic) is above the "
              "block's limit of %zu",
              b.static_bytes, name, b.launch->dyn_bytes, b.launch->shared_limit);
    }
    char* p = alloc_poisoned(bytes, 16);
    b.statics.push_back(SharedAlloc{key, p, bytes});
    return p;
}

// ---------------------------------------------------------------------------------------------
// 16-byte vector loads and stores
// ---------------------------------------------------------------------------------------------

void vector_access(const void* p, bool store, const char* file, int line) {
    const char* what = store ? "store" : "load";
    if ((uintptr_t)p % 16 != 0) {
        fault(file, line, "misaligned 16-byte vector %s at %p", what, p);
    }
    if (!global_extent_ok(p, 16) && !in_shared(p, 16)) {
        fault(file, line,
              "16-byte vector %s at %p is outside every device allocation and shared memory",
              what, p);
    }
}

// ---------------------------------------------------------------------------------------------
// cp.async
// ---------------------------------------------------------------------------------------------

void cp_async(void* dst, const void* src, int cp_size, int src_size, const char* file, int line) {
    if ((uintptr_t)dst % cp_size != 0 || (uintptr_t)src % cp_size != 0) {
        fault(file, line, "cp.async of %d bytes: misaligned address (dst %p, src %p)", cp_size, dst,
              src);
    }
    if (!in_shared(dst, cp_size)) {
        fault(file, line, "cp.async: destination %p is outside shared memory", dst);
    }
    if (src_size > 0 && !global_extent_ok(src, src_size)) {
        fault(file, line,
              "cp.async: source %p (%d bytes) is outside every device allocation (a tail that "
              "needs src-size 0?)",
              src, src_size);
    }
    memset(dst, 0xff, cp_size);  // poisoned until the wait
    tls_fib->uncommitted.push_back(Pending{dst, src, cp_size, src_size});
}

void cp_async_commit() {
    Fiber& f = *tls_fib;
    f.groups.push_back(std::move(f.uncommitted));
    f.uncommitted.clear();
}

static void complete(const std::vector<Pending>& g) {
    for (const Pending& p : g) {
        memcpy(p.dst, p.src, p.src_size);
        memset(static_cast<char*>(p.dst) + p.src_size, 0, p.cp_size - p.src_size);
    }
}

void cp_async_wait(int newest_pending, const char*, int) {
    Fiber& f = *tls_fib;
    while ((int)f.groups.size() > newest_pending) {
        complete(f.groups.front());
        f.groups.pop_front();
    }
}

// ---------------------------------------------------------------------------------------------
// Running a block
// ---------------------------------------------------------------------------------------------

}  // namespace kiln_emu

using namespace kiln_emu;

extern "C" void kiln_emu_fiber_start() {
#if defined(KILN_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    Block* b = tls_blk;
    Fiber* f = tls_fib;
    b->launch->kernel->invoke(b->launch->args);
    // The thread returned from the kernel.
    f->state = State::Exited;
    f->groups.clear();
    f->uncommitted.clear();
    b->exited++;
    clear_ready(*b, f->tid);
    if (b->at_barrier > 0) {
        record_error(*b->launch,
                     std::string(b->launch->kernel->name) + ": " + coords_str() +
                         " exited while " + std::to_string(b->at_barrier) +
                         " thread(s) wait at __syncthreads (" + base_name(b->bar_file) + ":" +
                         std::to_string(b->bar_line) + "): the barrier can never complete");
        b->aborted = true;
    }
    const int warp = f->tid >> 5;
    WarpState& w = b->warps[warp];
    w.exited |= 1u << (f->tid & 31);
    if (!b->aborted && w.active && (w.mask >> (f->tid & 31) & 1)) {
        record_error(*b->launch, std::string(b->launch->kernel->name) + ": " + coords_str() +
                                     " exited while its warp waits for it at " +
                                     collective_name(w.op) + " (" + base_name(w.file) + ":" +
                                     std::to_string(w.line) + ")");
        b->aborted = true;
    }
#if defined(KILN_ASAN)
    __sanitizer_start_switch_fiber(nullptr, nullptr, 0);
#endif
    swap_context(f->ctx, b->sched);
    __builtin_unreachable();
}

namespace kiln_emu {

static std::string deadlock_message(Block& b) {
    std::string s = std::string(b.launch->kernel->name) + ": " + coords_str() + ": deadlock: ";
    if (b.at_barrier > 0) {
        s += std::to_string(b.at_barrier) + " thread(s) wait at __syncthreads (" +
             base_name(b.bar_file) + ":" + std::to_string(b.bar_line) + ")";
    }
    for (int w = 0; w < b.nwarps; ++w) {
        const WarpState& ws = b.warps[w];
        if (!ws.active) continue;
        char buf[200];
        snprintf(buf, sizeof buf, "; warp %d waits at %s (%s:%d) for lanes 0x%08x", w,
                 collective_name(ws.op), base_name(ws.file), ws.line, ws.mask & ~ws.arrived);
        s += buf;
    }
    return s;
}

static void run_block(Launch& l, uint64_t linear, std::vector<Fiber>& fibers) {
    Block b;
    b.launch = &l;
    b.coords.grid_dim = l.grid;
    b.coords.block_dim = l.block;
    b.coords.block_idx.x = (unsigned)(linear % l.grid.x);
    b.coords.block_idx.y = (unsigned)((linear / l.grid.x) % l.grid.y);
    b.coords.block_idx.z = (unsigned)(linear / ((uint64_t)l.grid.x * l.grid.y));
    b.nthreads = (int)(l.block.x * l.block.y * l.block.z);
    b.nwarps = (b.nthreads + 31) / 32;
    b.warps.assign(b.nwarps, WarpState{});
    b.ready.assign((b.nthreads + 63) / 64, 0);
    b.fibers = &fibers;
    b.dyn = l.dyn_bytes ? alloc_poisoned(l.dyn_bytes, 128) : nullptr;
    for (int t = 0; t < b.nthreads; ++t) {
        Fiber& f = fibers[t];
        f.tid = t;
        f.state = State::Ready;
        f.coords.thread_idx.x = t % l.block.x;
        f.coords.thread_idx.y = (t / l.block.x) % l.block.y;
        f.coords.thread_idx.z = t / (l.block.x * l.block.y);
        f.groups.clear();
        f.uncommitted.clear();
#if defined(KILN_ASAN)
        // A fiber abandoned by a fault leaves its frames' redzones poisoned: the stack is fresh.
        __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
        make_context(f.ctx, f.stack, kStackBytes);
        set_ready(b, t);
    }
    tls_blk = &b;
    tls_block = &b.coords;
    for (;;) {
        int next = -1;
        for (size_t w = 0; w < b.ready.size(); ++w) {
            if (b.ready[w]) {
                next = (int)(w * 64 + __builtin_ctzll(b.ready[w]));
                break;
            }
        }
        if (next < 0) {
            if (!b.aborted && b.exited < b.nthreads) {
                tls_fib = nullptr;
                record_error(l, deadlock_message(b));
            }
            break;
        }
        Fiber& f = fibers[next];
        tls_fib = &f;
        tls_thread = &f.coords;
#if defined(KILN_ASAN)
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
        swap_context(b.sched, f.ctx);
#if defined(KILN_ASAN)
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        if (b.aborted) break;
    }
    tls_fib = nullptr;
    tls_thread = nullptr;
    tls_blk = nullptr;
    tls_block = nullptr;
    free(b.dyn);
    for (SharedAlloc& s : b.statics) free(s.ptr);
}

static void worker(Launch& l, uint64_t nblocks) {
    const int nthreads = (int)(l.block.x * l.block.y * l.block.z);
    std::vector<Fiber> fibers(nthreads);
    for (Fiber& f : fibers) f.stack = g_stacks.take();
    for (;;) {
        if (l.failed.load()) break;
        const uint64_t b = l.next.fetch_add(1);
        if (b >= nblocks) break;
        run_block(l, b, fibers);
    }
    for (Fiber& f : fibers) g_stacks.give(f.stack);
}

static unsigned worker_count() {
    static const unsigned n = [] {
        const char* e = getenv("KILN_EMU_THREADS");
        if (e && atoi(e) > 0) return (unsigned)atoi(e);
        const unsigned hw = std::thread::hardware_concurrency();
        return hw ? hw : 1u;
    }();
    return n;
}

}  // namespace kiln_emu

// ---------------------------------------------------------------------------------------------
// C interface (src/backend/cuda/device/emu.rs)
// ---------------------------------------------------------------------------------------------

extern "C" void* kiln_emu_alloc(size_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return nullptr;
    std::unique_lock<std::shared_mutex> lock(g_alloc_mu);
    g_allocs[(uintptr_t)p] = bytes;
    return p;
}

extern "C" void kiln_emu_free(void* p) {
    {
        std::unique_lock<std::shared_mutex> lock(g_alloc_mu);
        g_allocs.erase((uintptr_t)p);
    }
    free(p);
}

// 1 when [p, p + bytes) lies inside one live allocation.
extern "C" int kiln_emu_extent_ok(const void* p, size_t bytes) {
    return global_extent_ok(p, bytes) ? 1 : 0;
}

static void put_error(char* err, size_t errlen, const std::string& s) {
    if (errlen == 0) return;
    snprintf(err, errlen, "%s", s.c_str());
}

// Run `kernel` over the grid. `args[i]` points at argument i's value; `arg_is_ptr` says which
// are device pointers. Returns 0, or 1 with a one-line message in `err`.
extern "C" int kiln_emu_launch(const KernelEntry* kernel, const uint32_t grid[3],
                               const uint32_t block[3], uint32_t dyn_bytes,
                               uint32_t max_dyn_attr, void** args, const uint8_t* arg_is_ptr,
                               int nargs, char* err, size_t errlen) {
    const std::string name = kernel->name;
    auto fail = [&](const std::string& why) {
        put_error(err, errlen, name + ": " + why);
        return 1;
    };
    if (nargs != kernel->nargs) {
        return fail("takes " + std::to_string(kernel->nargs) + " arguments, " +
                    std::to_string(nargs) + " given");
    }
    for (int i = 0; i < nargs; ++i) {
        const bool want_ptr = (kernel->ptr_mask >> i) & 1;
        if (want_ptr != (arg_is_ptr[i] != 0)) {
            return fail("argument " + std::to_string(i) + " must be " +
                        (want_ptr ? "a device pointer" : "a scalar") + ", got " +
                        (arg_is_ptr[i] ? "a device pointer" : "a scalar"));
        }
    }
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    if (block[0] == 0 || block[1] == 0 || block[2] == 0 || block[0] > 1024 || block[1] > 1024 ||
        block[2] > 64 || threads > 1024) {
        return fail("block (" + std::to_string(block[0]) + "," + std::to_string(block[1]) + "," +
                    std::to_string(block[2]) +
                    ") is over CUDA's limits (x, y ≤ 1024, z ≤ 64, at most 1024 threads)");
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu ||
        grid[1] > 65535 || grid[2] > 65535) {
        return fail("grid (" + std::to_string(grid[0]) + "," + std::to_string(grid[1]) + "," +
                    std::to_string(grid[2]) +
                    ") is over CUDA's limits (x ≤ 2^31−1, y, z ≤ 65535, none zero)");
    }
    if (dyn_bytes > kSharedMax) {
        return fail("dynamic shared memory of " + std::to_string(dyn_bytes) +
                    " bytes is above the device's 227 KiB");
    }
    if (dyn_bytes > kSharedNoOptIn && dyn_bytes > max_dyn_attr) {
        return fail("dynamic shared memory of " + std::to_string(dyn_bytes) +
                    " bytes is above 48 KiB without CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES "
                    "(set to " + std::to_string(max_dyn_attr) + ")");
    }
    Launch l;
    l.kernel = kernel;
    l.args = args;
    l.grid = dim3{grid[0], grid[1], grid[2]};
    l.block = dim3{block[0], block[1], block[2]};
    l.dyn_bytes = dyn_bytes;
    l.shared_limit = dyn_bytes > kSharedNoOptIn || max_dyn_attr > kSharedNoOptIn
                         ? kSharedMax
                         : kSharedNoOptIn;
    const uint64_t nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    const unsigned nworkers = (unsigned)std::min<uint64_t>(worker_count(), nblocks);
    std::vector<std::thread> extra;
    for (unsigned w = 1; w < nworkers; ++w) {
        extra.emplace_back([&l, nblocks] { worker(l, nblocks); });
    }
    worker(l, nblocks);
    for (auto& t : extra) t.join();
    if (l.failed.load()) {
        put_error(err, errlen, l.error);
        return 1;
    }
    return 0;
}
