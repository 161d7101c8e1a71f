//! Safetensors files as kiln reads and writes them: named f32 tensors, written atomically (as F32,
//! or rounded to BF16 for Hugging Face exports) and read back as f32 (BF16 and F16 files are
//! widened exactly). Checkpoints (`train::checkpoint`) and Hugging Face import and export (`hf`)
//! both go through here.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use safetensors::{Dtype, SafeTensors, View};

use crate::fsutil::{read_file, sync_parent, tmp_path};

/// One named f32 tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>, // (shape.iter().product(),) row-major
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// A borrowed f32 tensor as safetensors sees it: little-endian bytes, zero-copy on LE hosts, or
/// rounded to bf16 when `bf16` is set.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
    bf16: bool,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        if self.bf16 {
            Dtype::BF16
        } else {
            Dtype::F32
        }
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.bf16 {
            Cow::Owned(
                self.data
                    .iter()
                    .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
                    .collect(),
            )
        } else if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * if self.bf16 { 2 } else { 4 }
    }
}

/// Write F32 tensors as a safetensors file, atomically (temporary name, fsync, rename, directory
/// fsync). Streams tensor data to disk without building the file in memory. `metadata` becomes
/// the `__metadata__` map (e.g. `{"format": "pt"}`, which transformers expects).
pub fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_safetensors_as(path, tensors, metadata, false)
}

/// As [`write_safetensors`], storing the tensors as bf16 (round to nearest even) when `bf16`.
pub fn write_safetensors_as(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
    bf16: bool,
) -> Result<()> {
    let mut names = HashSet::with_capacity(tensors.len());
    for t in tensors {
        let elems = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if elems != Some(t.data.len()) {
            bail!(
                "{}: tensor {} has shape {:?} but {} values",
                path.display(),
                t.name,
                t.shape,
                t.data.len()
            );
        }
        if !names.insert(t.name.as_str()) {
            bail!("{}: duplicate tensor name {}", path.display(), t.name);
        }
    }
    let views = tensors.iter().map(|t| {
        let view = F32View {
            shape: &t.shape,
            data: &t.data,
            bf16,
        };
        (t.name.as_str(), view)
    });

    let tmp = tmp_path(path);
    let result = (|| -> std::result::Result<(), String> {
        safetensors::serialize_to_file(views, metadata, &tmp).map_err(|e| e.to_string())?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            bail!("{}: cannot write: {e}", path.display())
        }
    }
}

/// Read every tensor of a safetensors file as f32, sorted by name. F32 is read bit-exactly; BF16
/// and F16 are widened exactly; any other dtype is an error naming the tensor.
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other}; only F32, BF16 and F16 are supported",
                path.display()
            ),
        };
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// bfloat16 is the upper half of an f32: widening is a shift.
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// IEEE binary16 (1 sign, 5 exponent bits with bias 15, 10 mantissa bits) to f32, exactly.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        // Zero and subnormals: mantissa × 2^-24, exact in f32.
        0 => {
            let magnitude = mantissa as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(sign | magnitude.to_bits())
        }
        // Infinity and NaN (the payload moves to the top of the f32 mantissa).
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        // Normal: rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub(crate) fn tensor(name: &str, shape: &[usize], seed: u32) -> NamedTensor {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|i| (i as f32 + seed as f32) * 0.25 - 1.0)
            .collect();
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    pub(crate) fn error_of<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn empty_and_zero_sized_tensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        write_safetensors(&path, &[], None).unwrap();
        assert!(read_safetensors(&path).unwrap().is_empty());
        let t = vec![tensor("empty", &[0, 7], 0), tensor("scalar", &[], 3)];
        write_safetensors(&path, &t, None).unwrap();
        assert_eq!(read_safetensors(&path).unwrap(), t);
    }

    #[test]
    fn write_safetensors_refuses_shape_mismatch_and_duplicate_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut bad = tensor("w", &[2, 3], 0);
        bad.data.pop();
        let e = error_of(write_safetensors(&path, &[bad], None));
        assert!(
            e.contains("x.safetensors: tensor w has shape [2, 3] but 5 values"),
            "{e}"
        );
        let dup = [tensor("w", &[2], 0), tensor("w", &[2], 1)];
        let e = error_of(write_safetensors(&path, &dup, None));
        assert!(e.contains("duplicate tensor name w"), "{e}");
        assert!(!path.exists() && !tmp_path(&path).exists());
    }

    #[test]
    fn random_garbage_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.safetensors");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..200 {
            let len = (round * 37) % 600;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Half the time, a plausible header length so the JSON parser sees the garbage.
            if round % 2 == 0 && len >= 8 {
                bytes[..8].copy_from_slice(&((len as u64 - 8) / 2).to_le_bytes());
            }
            fs::write(&path, &bytes).unwrap();
            let e = error_of(read_safetensors(&path));
            assert!(
                e.contains("garbage.safetensors: not a valid safetensors file: "),
                "{e}"
            );
        }
        // Valid JSON header, lying offsets.
        let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        fs::write(&path, &bytes).unwrap();
        let e = error_of(read_safetensors(&path));
        assert!(e.contains("not a valid safetensors file: "), "{e}");
    }

    #[test]
    fn unsupported_dtype_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ints.safetensors");
        let data = [0u8; 16];
        let view = safetensors::tensor::TensorView::new(Dtype::I64, vec![2], &data).unwrap();
        fs::write(
            &path,
            safetensors::serialize([("ids", view)], None).unwrap(),
        )
        .unwrap();
        let e = error_of(read_safetensors(&path));
        assert!(
            e.contains("ints.safetensors: tensor ids has dtype I64; only F32, BF16 and F16"),
            "{e}"
        );
    }

    #[test]
    fn bf16_conversion_matches_known_values() {
        let cases: [(u16, f32); 8] = [
            (0x0000, 0.0),
            (0x3f80, 1.0),
            (0xc040, -3.0),
            (0x4049, 3.140625),
            (0x7f7f, 3.389_531_4e38), // largest finite bf16
            (0x0080, f32::MIN_POSITIVE),
            (0x7f80, f32::INFINITY),
            (0xff80, f32::NEG_INFINITY),
        ];
        for (bits, want) in cases {
            assert_eq!(bf16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert_eq!(bf16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(bf16_to_f32(0x0001).to_bits(), 0x0001_0000); // subnormal 2^-133
        assert!(bf16_to_f32(0x7fc0).is_nan());
        assert!(bf16_to_f32(0xffc1).is_nan());
        // Every bf16 survives f32 and back through truncation.
        for bits in 0..=u16::MAX {
            assert_eq!((bf16_to_f32(bits).to_bits() >> 16) as u16, bits);
        }
    }

    #[test]
    fn f16_conversion_matches_known_values() {
        let cases: [(u16, f32); 12] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),         // largest finite
            (0x0400, 6.103_515_6e-5),  // smallest normal 2^-14
            (0x0001, 5.960_464_5e-8),  // smallest subnormal 2^-24
            (0x03ff, 6.097_555e-5),    // largest subnormal 1023 × 2^-24
            (0x8001, -5.960_464_5e-8), // negative subnormal
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
            (0x4248, 3.140625),
        ];
        for (bits, want) in cases {
            assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0xfc01).is_nan());
        // Exhaustive check against the textbook formula, in f64.
        for bits in 0..=u16::MAX {
            let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
            let e = i32::from((bits >> 10) & 0x1f);
            let m = f64::from(bits & 0x3ff);
            let got = f16_to_f32(bits);
            match e {
                0x1f if m == 0.0 => assert_eq!(got, sign as f32 * f32::INFINITY),
                0x1f => assert!(got.is_nan()),
                0 => assert_eq!(f64::from(got), sign * m * 2f64.powi(-24)),
                _ => assert_eq!(
                    f64::from(got),
                    sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15)
                ),
            }
            if got == 0.0 {
                assert_eq!(got.is_sign_negative(), bits >> 15 == 1);
            }
        }
    }

    #[test]
    fn half_precision_files_are_widened_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.safetensors");
        let bf16: Vec<u8> = [0x3f80u16, 0xc040, 0x0000, 0x8000]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let f16: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7c00]
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        let f32s: Vec<u8> = [0.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        use safetensors::tensor::TensorView;
        let tensors = [
            (
                "a_bf16",
                TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap(),
            ),
            ("b_f16", TensorView::new(Dtype::F16, vec![4], &f16).unwrap()),
            (
                "c_f32",
                TensorView::new(Dtype::F32, vec![2], &f32s).unwrap(),
            ),
        ];
        fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
        let got = read_safetensors(&path).unwrap();
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a_bf16", "b_f16", "c_f32"]);
        assert_eq!(got[0].shape, [2, 2]);
        assert_eq!(got[0].data, [1.0, -3.0, 0.0, -0.0]);
        assert!(got[0].data[3].is_sign_negative());
        assert_eq!(got[1].data, [1.0, -2.0, 5.960_464_5e-8, f32::INFINITY]);
        assert_eq!(got[2].data, [0.5, -0.25]);
    }
}
