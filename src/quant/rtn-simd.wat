;; RTN of one BF16 row with WebAssembly SIMD: the arithmetic of quantizeRtn (src/quant/rtn.ts), four lanes at a time.
;; Built into rtn-simd.wasm by scripts/build-wasm.js (wabt); src/quant/rtn-packed.ts loads it and checks it against
;; the scalar kernel (test/quant/rtn-packed.test.ts).
;;
;; rtn_row(src, cols, gs, maxq, codes, scales, zeros) -> 0, or 1 when the row holds a NaN or ±Inf
;;   src:    cols BF16 values (little-endian u16)       cols a multiple of gs, gs a multiple of 8
;;   codes:  cols u8 codes
;;   scales: cols/gs BF16 scales (u16);  zeros: cols/gs u8 zero points
;; Per group, as groupParams: lo = min(0, min w), hi = max(0, max w), scale = bf16(f32((hi − lo) / maxq)) or 1,
;; zero = clamp(rint(f32(−lo / scale)), 0, maxq); code = clamp(rint(f32(w / scale)) + zero, 0, maxq).
;; f32x4.div is the correctly rounded float32 quotient (= fround of the double one), f32x4.nearest rounds half to
;; even, as rint does.
(module
  (memory (export "memory") 1)
  (func (export "rtn_row") (param $src i32) (param $cols i32) (param $gs i32) (param $maxq i32)
                           (param $codes i32) (param $scales i32) (param $zeros i32) (result i32)
    (local $g i32) (local $ng i32) (local $i i32) (local $p i32) (local $end i32)
    (local $x v128) (local $a v128) (local $b v128) (local $lo v128) (local $hi v128) (local $bad v128)
    (local $sv v128) (local $zv v128) (local $mv v128) (local $q v128)
    (local $flo f32) (local $fhi f32) (local $scale f32) (local $bits i32) (local $zero f32)
    (local.set $ng (i32.div_u (local.get $cols) (local.get $gs)))
    (local.set $bad (v128.const i32x4 0 0 0 0))
    (local.set $mv (i32x4.splat (local.get $maxq)))
    (block $done
      (loop $group
        (br_if $done (i32.ge_u (local.get $g) (local.get $ng)))
        ;; the group's range, and whether any value has an all-ones exponent
        (local.set $p (i32.add (local.get $src) (i32.shl (i32.mul (local.get $g) (local.get $gs)) (i32.const 1))))
        (local.set $end (i32.add (local.get $p) (i32.shl (local.get $gs) (i32.const 1))))
        (local.set $lo (f32x4.splat (f32.const inf)))
        (local.set $hi (f32x4.splat (f32.const -inf)))
        (local.set $i (local.get $p))
        (loop $range
          (local.set $x (v128.load (local.get $i)))
          (local.set $bad (v128.or (local.get $bad)
            (i16x8.eq (v128.and (local.get $x) (i16x8.splat (i32.const 0x7f80))) (i16x8.splat (i32.const 0x7f80)))))
          (local.set $a (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $x)) (i32.const 16)))
          (local.set $b (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $x)) (i32.const 16)))
          (local.set $lo (f32x4.min (local.get $lo) (f32x4.min (local.get $a) (local.get $b))))
          (local.set $hi (f32x4.max (local.get $hi) (f32x4.max (local.get $a) (local.get $b))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br_if $range (i32.lt_u (local.get $i) (local.get $end))))
        (if (v128.any_true (local.get $bad)) (then (return (i32.const 1))))
        (local.set $flo (f32.min (f32.min (f32x4.extract_lane 0 (local.get $lo)) (f32x4.extract_lane 1 (local.get $lo)))
                                 (f32.min (f32x4.extract_lane 2 (local.get $lo)) (f32x4.extract_lane 3 (local.get $lo)))))
        (local.set $fhi (f32.max (f32.max (f32x4.extract_lane 0 (local.get $hi)) (f32x4.extract_lane 1 (local.get $hi)))
                                 (f32.max (f32x4.extract_lane 2 (local.get $hi)) (f32x4.extract_lane 3 (local.get $hi)))))
        (local.set $flo (f32.min (f32.const 0) (local.get $flo)))
        (local.set $fhi (f32.max (f32.const 0) (local.get $fhi)))
        ;; scale = bf16(f32((hi − lo) / maxq)), round to nearest even on the top 16 bits; 1 when 0
        (local.set $scale (f32.demote_f64 (f64.div (f64.sub (f64.promote_f32 (local.get $fhi)) (f64.promote_f32 (local.get $flo)))
                                                   (f64.convert_i32_u (local.get $maxq)))))
        (local.set $bits (i32.reinterpret_f32 (local.get $scale)))
        (local.set $bits (i32.and (i32.add (i32.add (local.get $bits) (i32.const 0x7fff)) (i32.and (i32.shr_u (local.get $bits) (i32.const 16)) (i32.const 1)))
                                  (i32.const 0xffff0000)))
        (local.set $scale (f32.reinterpret_i32 (local.get $bits)))
        (if (f32.eq (local.get $scale) (f32.const 0)) (then (local.set $scale (f32.const 1)) (local.set $bits (i32.const 0x3f800000))))
        (local.set $zero (f32.nearest (f32.demote_f64 (f64.div (f64.neg (f64.promote_f32 (local.get $flo))) (f64.promote_f32 (local.get $scale))))))
        (local.set $zero (f32.min (f32.convert_i32_u (local.get $maxq)) (f32.max (f32.const 0) (local.get $zero))))
        (i32.store16 (i32.add (local.get $scales) (i32.shl (local.get $g) (i32.const 1))) (i32.shr_u (local.get $bits) (i32.const 16)))
        (i32.store8 (i32.add (local.get $zeros) (local.get $g)) (i32.trunc_f32_u (local.get $zero)))
        ;; the codes, eight at a time
        (local.set $sv (f32x4.splat (local.get $scale)))
        (local.set $zv (i32x4.splat (i32.trunc_f32_u (local.get $zero))))
        (local.set $i (local.get $p))
        (local.set $end (i32.add (local.get $codes) (i32.mul (local.get $g) (local.get $gs))))
        (loop $quant
          (local.set $x (v128.load (local.get $i)))
          (local.set $a (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $x)) (i32.const 16)))
          (local.set $b (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $x)) (i32.const 16)))
          (local.set $a (i32x4.min_s (local.get $mv) (i32x4.max_s (v128.const i32x4 0 0 0 0)
            (i32x4.add (local.get $zv) (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.div (local.get $a) (local.get $sv))))))))
          (local.set $b (i32x4.min_s (local.get $mv) (i32x4.max_s (v128.const i32x4 0 0 0 0)
            (i32x4.add (local.get $zv) (i32x4.trunc_sat_f32x4_s (f32x4.nearest (f32x4.div (local.get $b) (local.get $sv))))))))
          (local.set $q (i16x8.narrow_i32x4_u (local.get $a) (local.get $b)))
          (local.set $q (i8x16.narrow_i16x8_u (local.get $q) (local.get $q)))
          (v128.store64_lane 0 (local.get $end) (local.get $q))
          (local.set $end (i32.add (local.get $end) (i32.const 8)))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br_if $quant (i32.lt_u (local.get $i) (i32.add (local.get $p) (i32.shl (local.get $gs) (i32.const 1))))))
        (local.set $g (i32.add (local.get $g) (i32.const 1)))
        (br $group)))
    (i32.const 0))
)
