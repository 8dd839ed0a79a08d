//! Hostile sizes in calibration/validation inputs: `.npy` headers whose shapes overflow or promise more
//! data than the file holds, `.npz` members larger than they declare, and declared graph-input shapes
//! too large to generate random data for are all clean errors, decided before anything is allocated.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sparsify_validate::npy::{read_npy_bytes, read_npz_bytes, to_npy_bytes};
use sparsify_validate::{random_feed, Array, Dim, InputDecl};

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

fn err(bytes: &[u8]) -> String {
    read_npy_bytes(bytes, Path::new("h.npy")).unwrap_err().to_string()
}

#[test]
fn npy_headers_with_absurd_shapes_are_rejected() {
    // The element count overflows usize.
    let e = err(&npy("<f4", "(4294967296, 4294967296, 16)", &[0; 16]));
    assert!(e.contains("h.npy") && e.contains("overflows"), "{e}");
    // The byte count overflows (count fits, × 8 bytes does not).
    let e = err(&npy("<f8", "(4611686018427387904,)", &[0; 16]));
    assert!(e.contains("overflows"), "{e}");
    // A huge but representable shape over a 16-byte body: "truncated", nothing allocated for 4 TiB.
    let e = err(&npy("<f4", "(1099511627776,)", &[0; 16]));
    assert!(e.contains("truncated data") && e.contains("needs 4398046511104 bytes"), "{e}");
    // A version-2 header length pointing far past the end of the file.
    let mut v2 = npy("<f4", "(1,)", &[0; 4]);
    v2[6] = 2;
    v2.splice(8..10, [0xff, 0xff, 0xff, 0x7f]);
    assert!(err(&v2).contains("truncated header"), "{}", err(&v2));
    // Zero elements along a huge dim are fine only when the shape itself fits.
    let e = err(&npy("<f4", "(0, 4294967296, 4294967296)", &[]));
    assert!(e.contains("h.npy"), "{e}");
}

#[test]
fn npz_member_larger_than_declared_is_rejected() {
    // A deflated member whose central directory declares 16 bytes but whose stream inflates to 1 MiB.
    let big = to_npy_bytes(&Array::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1 << 18]))));
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zw = zip::ZipWriter::new(&mut buf);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("x.npy", deflated).unwrap();
        zw.write_all(&big).unwrap();
        zw.finish().unwrap();
    }
    let mut bytes = buf.into_inner();
    // Patch the uncompressed size (local header offset 22, central directory entry offset 24) to 16.
    let set = |b: &mut Vec<u8>, at: usize| b[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    set(&mut bytes, 22);
    let cd = bytes.windows(4).position(|w| w == b"PK\x01\x02").expect("central directory");
    set(&mut bytes, cd + 24);
    let e = read_npz_bytes(&bytes, Path::new("bomb.npz")).unwrap_err().to_string();
    assert!(e.contains("bomb.npz"), "{e}");
    // The honest archive reads.
    assert!(read_npz_bytes(&bytes_with_honest_size(&big), Path::new("ok.npz")).is_ok());
}

fn bytes_with_honest_size(member: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zw = zip::ZipWriter::new(&mut buf);
    zw.start_file("x.npy", zip::write::SimpleFileOptions::default()).unwrap();
    zw.write_all(member).unwrap();
    zw.finish().unwrap();
    buf.into_inner()
}

#[test]
fn random_inputs_for_absurd_declared_shapes_are_refused() {
    let decl = |dims: Vec<Dim>| InputDecl { name: "x".into(), elem_type: 1, dims };
    let huge = decl(vec![Dim::Fixed(1 << 20), Dim::Fixed(1 << 20), Dim::Fixed(1 << 20)]);
    let e = random_feed(&[huge], &BTreeMap::new(), 0).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("too large"), "{e}");
    let overflow = decl(vec![Dim::Fixed(i64::MAX), Dim::Fixed(i64::MAX)]);
    assert!(random_feed(&[overflow], &BTreeMap::new(), 0).unwrap_err().to_string().contains("too large"));
    let hidden = decl(vec![Dim::Fixed(0), Dim::Fixed(1 << 40), Dim::Fixed(1 << 40)]);
    assert!(random_feed(&[hidden], &BTreeMap::new(), 0).is_err());
    // A normal shape still works.
    let ok = decl(vec![Dim::Fixed(2), Dim::Fixed(3)]);
    assert_eq!(random_feed(&[ok], &BTreeMap::new(), 0).unwrap().arrays[0].1.shape(), &[2, 3]);
}
