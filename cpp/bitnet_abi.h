/* bitnet_abi.h: the host <-> card ABI of a BitNet b1.58 matrix-engine card (docs/DEVICE_ABI.md).
 *
 * This one header holds every ioctl number, struct and constant of the driver interface; the
 * document is its prose and tests/test_abi.py checks the two against each other (sizes, field
 * offsets, request numbers). It is plain C99/C++17 so a kernel driver can include it (swap the
 * <stdint.h> types for __u32/__u64 in a uapi copy; the layout does not change).
 *
 * Rules (the kernel's ioctl guide): fixed-width fields only, natural alignment, explicit
 * padding, every struct a multiple of 8 bytes, reserved fields must be zero (the driver rejects
 * anything else with EINVAL, so they can gain a meaning later). Little-endian.
 *
 * The VIBEE driver's magic 'B' and its commands 1..7 keep their numbers and structs; 8.. are
 * ours. Offsets in every command are byte offsets into the one mmap'd DMA buffer.
 */
#ifndef BITNET_ABI_H
#define BITNET_ABI_H

#include <stdint.h>

#if defined(__linux__)
#include <linux/ioctl.h>
#define BITNET_IO(nr) _IO(BITNET_IOC_MAGIC, nr)
#define BITNET_IOR(nr, type) _IOR(BITNET_IOC_MAGIC, nr, type)
#define BITNET_IOW(nr, type) _IOW(BITNET_IOC_MAGIC, nr, type)
#define BITNET_IOWR(nr, type) _IOWR(BITNET_IOC_MAGIC, nr, type)
#else
/* asm-generic encoding (x86, arm, arm64, riscv): dir:2 | size:14 | type:8 | nr:8. */
#define BITNET_IOC_ENC(dir, nr, size) \
    ((unsigned long)(((unsigned long)(dir) << 30) | ((unsigned long)(size) << 16) | ((unsigned long)BITNET_IOC_MAGIC << 8) | (unsigned long)(nr)))
#define BITNET_IO(nr) BITNET_IOC_ENC(0u, nr, 0u)
#define BITNET_IOR(nr, type) BITNET_IOC_ENC(2u, nr, sizeof(type))
#define BITNET_IOW(nr, type) BITNET_IOC_ENC(1u, nr, sizeof(type))
#define BITNET_IOWR(nr, type) BITNET_IOC_ENC(3u, nr, sizeof(type))
#endif

#define BITNET_IOC_MAGIC 'B'

/* ABI version: major changes break old hosts; minor ones only add. (VIBEE's driver is 1.0.) */
#define BITNET_ABI_MAJOR 2u
#define BITNET_ABI_MINOR 1u

/* Default DMA buffer (VIBEE: 256 MB, input 64 MB at 0, output 64 MB at 64 MB, weights 128 MB
 * at 128 MB). A host must read the real layout from BITNET_IOC_GET_INFO. */
#define BITNET_MMAP_DEFAULT_SIZE (256ull << 20)
#define BITNET_INPUT_DEFAULT_SIZE (64ull << 20)
#define BITNET_OUTPUT_DEFAULT_SIZE (64ull << 20)
#define BITNET_WEIGHT_DEFAULT_SIZE (128ull << 20)

#define BITNET_MAX_OPS 8u        /* products in one MATMUL command (struct capacity) */
#define BITNET_GROUP 64u         /* elements per 16-byte group of a weight slot row */
#define BITNET_SLOT_MAGIC 0x4C534E42u /* "BNSL": header of a legacy LOAD_WEIGHTS blob */

/* Card states (GET_STATUS.state), VIBEE's enum. */
enum bitnet_state {
    BITNET_STATE_IDLE = 0,
    BITNET_STATE_LOADING_WEIGHTS = 1,
    BITNET_STATE_RUNNING = 2,
    BITNET_STATE_DMA_TRANSFER = 3,
    BITNET_STATE_ERROR = 4
};

/* Card error codes (GET_STATUS.error_code): VIBEE's 0..10, then ours. */
enum bitnet_card_error {
    BITNET_ERR_OK = 0,
    BITNET_ERR_INVALID_PARAM = 1,
    BITNET_ERR_DMA = 2,
    BITNET_ERR_TIMEOUT = 3,
    BITNET_ERR_BUSY = 4,
    BITNET_ERR_NO_MEMORY = 5,
    BITNET_ERR_WEIGHT_MISMATCH = 6,
    BITNET_ERR_HW = 7,
    BITNET_ERR_FIFO_OVERFLOW = 8,
    BITNET_ERR_FIFO_UNDERFLOW = 9,
    BITNET_ERR_AXI = 10,
    BITNET_ERR_ABORTED = 11,     /* the last command was stopped by ABORT or RESET */
    BITNET_ERR_NO_SLOT = 12,     /* a product named a slot that holds no weights */
    BITNET_ERR_ENGINE = 13       /* the matrix engine reported an internal fault */
};

/* GET_INFO.capabilities */
#define BITNET_CAP_MATMUL (1u << 0)            /* MATMUL command (always set by this ABI) */
#define BITNET_CAP_ACC_OUT (1u << 1)           /* products can also return int32 accumulators */
#define BITNET_CAP_LEGACY_INFERENCE (1u << 2)  /* START_INFERENCE runs token ids (not this card) */
#define BITNET_CAP_FAULT_INJECT (1u << 3)      /* INJECT_FAULT works (test builds of the card) */
#define BITNET_CAP_EMULATED (1u << 4)          /* counters come from the cycle model, not a clock */

/* ---------------------------------------------------------------- VIBEE commands 1..7 */

/* 1 START_INFERENCE (_IOW): token ids in, token ids out. Kept for source compatibility; a
 * matrix-engine card validates it and answers EOPNOTSUPP (no BITNET_CAP_LEGACY_INFERENCE). */
struct bitnet_inference_cmd {
    uint64_t input_offset;
    uint64_t output_offset;
    uint32_t input_size;
    uint32_t output_size;
    uint32_t num_tokens;
    uint32_t flags;
};

/* 2 LOAD_WEIGHTS (_IOW): a self-describing slot blob (struct bitnet_slot_header + rows) at
 * weight_offset, weight_size bytes in total, loaded into slot layer_id. */
struct bitnet_weight_cmd {
    uint64_t weight_offset;
    uint32_t layer_id;
    uint32_t weight_size;
};

/* The 16 bytes in front of a LOAD_WEIGHTS blob. */
struct bitnet_slot_header {
    uint32_t magic; /* BITNET_SLOT_MAGIC */
    uint32_t n;
    uint32_t k;
    float scale;
};

/* 3 GET_STATUS (_IOR) */
struct bitnet_status {
    uint32_t state;            /* enum bitnet_state */
    uint32_t current_layer;    /* slot of the product running (or run last) */
    uint32_t tokens_processed; /* activation rows through the engine since RESET (mod 2^32) */
    uint32_t error_code;       /* enum bitnet_card_error of the last command or fault */
};

/* 4 WAIT_COMPLETE (_IO), 5 ABORT (_IO), 7 RESET (_IO): no argument. */

/* 6 GET_PERF (_IOR) */
struct bitnet_perf {
    uint64_t total_cycles;
    uint64_t dma_cycles;
    uint64_t compute_cycles;
    uint32_t tokens_per_second; /* 0: tokens are a host notion; the host computes rates */
    uint32_t reserved;
};

/* ------------------------------------------------------------------ ABI 2 commands */

/* 8 GET_INFO (_IOR): version, capabilities, DMA buffer layout, limits, cycle-model figures. */
struct bitnet_info {
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t hw_version;      /* major[23:16].minor[15:8].patch[7:0], VIBEE's VERSION register */
    uint32_t capabilities;    /* BITNET_CAP_* */
    uint64_t mmap_size;       /* bytes to mmap at offset 0 */
    uint64_t input_offset;    /* activation region (host -> card) */
    uint64_t input_size;
    uint64_t output_offset;   /* result region (card -> host) */
    uint64_t output_size;
    uint64_t weight_offset;   /* weight staging region (host -> card weight memory) */
    uint64_t weight_size;
    uint64_t weight_capacity; /* bytes of card weight memory */
    uint32_t max_slots;       /* slots held at once */
    uint32_t max_slot_id;     /* slot ids are 0..max_slot_id */
    uint32_t max_ops;         /* products per MATMUL command (<= BITNET_MAX_OPS) */
    uint32_t max_rows;        /* activation rows per MATMUL command */
    uint32_t max_k;           /* inputs per slot row */
    uint32_t max_n;           /* rows per slot */
    uint64_t clock_hz;        /* engine clock */
    uint32_t lanes;           /* MAC lanes (output rows in parallel) */
    uint32_t lane_width;      /* MACs per lane per cycle */
    uint64_t ddr_bytes_per_s; /* weight memory -> engine bandwidth */
    uint64_t dma_bytes_per_s; /* host <-> card DMA bandwidth */
    uint32_t dma_setup_cycles;
    uint32_t pipeline_cycles;
    uint32_t dma_align;       /* every offset in a command must be a multiple of this */
    uint32_t reserved0;
    char board[32];           /* NUL-terminated board/profile name */
    char engine[32];          /* NUL-terminated engine description */
    uint64_t reserved[4];
};

/* 9 LOAD_SLOT (_IOW): rows [row_begin, row_begin + row_count) of an n x k matrix with scale
 * beta, packed in the slot layout, at src_offset (weight region). A load of row_begin 0 starts
 * the slot; the slot holds the new matrix once its last row arrived (the old one until then). */
struct bitnet_load_slot {
    uint32_t slot;
    uint32_t flags;    /* 0 */
    uint32_t n;
    uint32_t k;
    float scale;
    uint32_t row_begin;
    uint32_t row_count;
    uint32_t reserved; /* 0 */
    uint64_t src_offset;
    uint64_t src_size; /* row_count * row_bytes(k) */
};

/* 10 FREE_SLOTS (_IOW): free every slot id with first <= id < end. */
struct bitnet_free_slots {
    uint32_t first;
    uint32_t end;
    uint32_t flags;    /* 0 */
    uint32_t reserved; /* 0 */
};

/* 11 SLOT_INFO (_IOWR): slot in, shape out; ENOENT for an empty slot. */
struct bitnet_slot_info {
    uint32_t slot;
    uint32_t flags;    /* 0 */
    uint32_t n;
    uint32_t k;
    float scale;
    uint32_t reserved; /* 0 */
    uint64_t bytes;    /* weight memory the slot uses: n * row_bytes(k) */
};

/* One product of a MATMUL command: y[rows, n] (fp32) = engine(activations, slot). */
#define BITNET_OP_ACC (1u << 0) /* also write the int32 accumulators [rows, n] at acc_offset */
struct bitnet_matmul_op {
    uint32_t slot;
    uint32_t flags;      /* BITNET_OP_* */
    uint64_t y_offset;   /* output region, fp32 [rows, n] row-major */
    uint64_t acc_offset; /* output region, int32 [rows, n]; only with BITNET_OP_ACC */
    uint64_t reserved;   /* 0 */
};

/* 12 MATMUL (_IOW): n_ops products sharing one activation batch (a layer's q/k/v or gate/up).
 * Starts the command and returns; completion is signalled through poll() / WAIT_COMPLETE. */
struct bitnet_matmul_cmd {
    uint64_t act_offset;   /* input region: int8 rows, row r at act_offset + r * act_stride */
    uint64_t scale_offset; /* input region: fp32 s_x[rows] */
    uint32_t rows;         /* B */
    uint32_t k;            /* K: must equal every slot's k */
    uint32_t act_stride;   /* >= k */
    uint32_t n_ops;        /* 1..max_ops */
    uint32_t flags;        /* 0 */
    uint32_t reserved;     /* 0 */
    struct bitnet_matmul_op ops[BITNET_MAX_OPS];
};

/* 13 GET_PERF_EXT (_IOWR): every counter; flags BITNET_PERF_CLEAR zeroes them after reading. */
#define BITNET_PERF_CLEAR (1u << 0)
struct bitnet_perf_ext {
    uint32_t flags;
    uint32_t reserved; /* 0 */
    uint64_t total_cycles;
    uint64_t dma_cycles;
    uint64_t compute_cycles;
    uint64_t commands;
    uint64_t matmuls;
    uint64_t macs;
    uint64_t dma_bytes;
    uint64_t weight_bytes_read;
    uint64_t weight_bytes_used; /* state, not a counter: never cleared */
    uint32_t slots_used;
    uint32_t reserved2;
    uint64_t reserved3[5];
};

/* 14 INJECT_FAULT (_IOW): test builds of a card (BITNET_CAP_FAULT_INJECT) let `after` more
 * MATMUL commands complete, then make the next `count` fail with a card fault (state ERROR,
 * error_code ENGINE, DMA, FIFO_OVERFLOW or HW by `kind`) or never finish (HANG: until ABORT or
 * RESET). kind NONE clears pending faults. Other cards answer EOPNOTSUPP. ABI 2.0 had an
 * 8-byte struct (kind, count; no `after`); its request number BITNET_IOC_INJECT_FAULT_V20
 * still works. */
#define BITNET_FAULT_NONE 0u
#define BITNET_FAULT_ENGINE 1u
#define BITNET_FAULT_HANG 2u
#define BITNET_FAULT_DMA 3u
#define BITNET_FAULT_FIFO_OVERFLOW 4u
#define BITNET_FAULT_HW 5u
struct bitnet_fault {
    uint32_t kind;
    uint32_t count;
    uint32_t after;
    uint32_t reserved;
};
struct bitnet_fault_v20 {
    uint32_t kind;
    uint32_t count;
};

/* --------------------------------------------------------------------- request numbers */
#define BITNET_IOC_START_INFERENCE BITNET_IOW(1, struct bitnet_inference_cmd)
#define BITNET_IOC_LOAD_WEIGHTS BITNET_IOW(2, struct bitnet_weight_cmd)
#define BITNET_IOC_GET_STATUS BITNET_IOR(3, struct bitnet_status)
#define BITNET_IOC_WAIT_COMPLETE BITNET_IO(4)
#define BITNET_IOC_ABORT BITNET_IO(5)
#define BITNET_IOC_GET_PERF BITNET_IOR(6, struct bitnet_perf)
#define BITNET_IOC_RESET BITNET_IO(7)
#define BITNET_IOC_GET_INFO BITNET_IOR(8, struct bitnet_info)
#define BITNET_IOC_LOAD_SLOT BITNET_IOW(9, struct bitnet_load_slot)
#define BITNET_IOC_FREE_SLOTS BITNET_IOW(10, struct bitnet_free_slots)
#define BITNET_IOC_SLOT_INFO BITNET_IOWR(11, struct bitnet_slot_info)
#define BITNET_IOC_MATMUL BITNET_IOW(12, struct bitnet_matmul_cmd)
#define BITNET_IOC_GET_PERF_EXT BITNET_IOWR(13, struct bitnet_perf_ext)
#define BITNET_IOC_INJECT_FAULT BITNET_IOW(14, struct bitnet_fault)
#define BITNET_IOC_INJECT_FAULT_V20 BITNET_IOW(14, struct bitnet_fault_v20)

/* ------------------------------------------------------------------- layout checks */
#ifdef __cplusplus
#include <cstddef>
#define BITNET_ABI_ASSERT(cond, msg) static_assert(cond, msg)
#else
#include <stddef.h>
#define BITNET_ABI_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

BITNET_ABI_ASSERT(sizeof(float) == 4, "binary32 float");
BITNET_ABI_ASSERT(sizeof(struct bitnet_inference_cmd) == 32, "bitnet_inference_cmd");
BITNET_ABI_ASSERT(offsetof(struct bitnet_inference_cmd, input_size) == 16, "bitnet_inference_cmd.input_size");
BITNET_ABI_ASSERT(offsetof(struct bitnet_inference_cmd, flags) == 28, "bitnet_inference_cmd.flags");
BITNET_ABI_ASSERT(sizeof(struct bitnet_weight_cmd) == 16, "bitnet_weight_cmd");
BITNET_ABI_ASSERT(offsetof(struct bitnet_weight_cmd, weight_size) == 12, "bitnet_weight_cmd.weight_size");
BITNET_ABI_ASSERT(sizeof(struct bitnet_slot_header) == 16, "bitnet_slot_header");
BITNET_ABI_ASSERT(sizeof(struct bitnet_status) == 16, "bitnet_status");
BITNET_ABI_ASSERT(offsetof(struct bitnet_status, error_code) == 12, "bitnet_status.error_code");
BITNET_ABI_ASSERT(sizeof(struct bitnet_perf) == 32, "bitnet_perf");
BITNET_ABI_ASSERT(offsetof(struct bitnet_perf, tokens_per_second) == 24, "bitnet_perf.tokens_per_second");
BITNET_ABI_ASSERT(sizeof(struct bitnet_info) == 248, "bitnet_info");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, mmap_size) == 16, "bitnet_info.mmap_size");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, max_slots) == 80, "bitnet_info.max_slots");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, clock_hz) == 104, "bitnet_info.clock_hz");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, ddr_bytes_per_s) == 120, "bitnet_info.ddr_bytes_per_s");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, dma_setup_cycles) == 136, "bitnet_info.dma_setup_cycles");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, board) == 152, "bitnet_info.board");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, engine) == 184, "bitnet_info.engine");
BITNET_ABI_ASSERT(offsetof(struct bitnet_info, reserved) == 216, "bitnet_info.reserved");
BITNET_ABI_ASSERT(sizeof(struct bitnet_load_slot) == 48, "bitnet_load_slot");
BITNET_ABI_ASSERT(offsetof(struct bitnet_load_slot, scale) == 16, "bitnet_load_slot.scale");
BITNET_ABI_ASSERT(offsetof(struct bitnet_load_slot, src_offset) == 32, "bitnet_load_slot.src_offset");
BITNET_ABI_ASSERT(sizeof(struct bitnet_free_slots) == 16, "bitnet_free_slots");
BITNET_ABI_ASSERT(sizeof(struct bitnet_slot_info) == 32, "bitnet_slot_info");
BITNET_ABI_ASSERT(offsetof(struct bitnet_slot_info, bytes) == 24, "bitnet_slot_info.bytes");
BITNET_ABI_ASSERT(sizeof(struct bitnet_matmul_op) == 32, "bitnet_matmul_op");
BITNET_ABI_ASSERT(offsetof(struct bitnet_matmul_op, acc_offset) == 16, "bitnet_matmul_op.acc_offset");
BITNET_ABI_ASSERT(sizeof(struct bitnet_matmul_cmd) == 40 + 32 * BITNET_MAX_OPS, "bitnet_matmul_cmd");
BITNET_ABI_ASSERT(offsetof(struct bitnet_matmul_cmd, ops) == 40, "bitnet_matmul_cmd.ops");
BITNET_ABI_ASSERT(sizeof(struct bitnet_perf_ext) == 128, "bitnet_perf_ext");
BITNET_ABI_ASSERT(offsetof(struct bitnet_perf_ext, weight_bytes_used) == 72, "bitnet_perf_ext.weight_bytes_used");
BITNET_ABI_ASSERT(offsetof(struct bitnet_perf_ext, slots_used) == 80, "bitnet_perf_ext.slots_used");
BITNET_ABI_ASSERT(sizeof(struct bitnet_fault) == 16, "bitnet_fault");
BITNET_ABI_ASSERT(offsetof(struct bitnet_fault, after) == 8, "bitnet_fault.after");
BITNET_ABI_ASSERT(sizeof(struct bitnet_fault_v20) == 8, "bitnet_fault_v20");

#endif /* BITNET_ABI_H */
