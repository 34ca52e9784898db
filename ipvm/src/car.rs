//! CARv1 archives (iroh-car), with every block's hash checked on read.

use cid::Cid;
use iroh_car::{CarHeader, CarReader, CarWriter};
use multihash_codetable::{Code, MultihashDigest};

/// `car_bytes_max`: the largest CAR read.
pub const CAR_BYTES_MAX: usize = 256 * 1024 * 1024;
/// `car_blocks_max`: the most blocks in one CAR.
pub const CAR_BLOCKS_MAX: usize = 1_000_000;

/// The multicodec of a CAR file, for the CID of a CAR's own bytes.
const CAR_CODEC: u64 = 0x0202;

/// What makes bytes no CAR this kernel takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("a CAR larger than car_bytes_max ({CAR_BYTES_MAX} bytes)")]
    TooLarge,
    #[error("a CAR of more than car_blocks_max ({CAR_BLOCKS_MAX}) blocks")]
    TooManyBlocks,
    #[error("not a CARv1: {0}")]
    Malformed(String),
    #[error("block {0} does not hash to its CID")]
    WrongHash(Cid),
    #[error("block {cid} uses hash 0x{code:x}, which this kernel does not check (sha2-256 only)")]
    UnsupportedHash { cid: Cid, code: u64 },
}

/// A CAR read whole: its roots and blocks, each block's hash checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Car {
    pub roots: Vec<Cid>,
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

/// The CID of a CAR's own bytes (codec `car`, sha2-256): how the bucket
/// VM names a CAR it stored.
pub fn car_cid(bytes: &[u8]) -> Cid {
    Cid::new_v1(CAR_CODEC, Code::Sha2_256.digest(bytes))
}

/// Checks that `data` hashes to `cid`.
pub fn check_block(cid: &Cid, data: &[u8]) -> Result<(), CarError> {
    let code = cid.hash().code();
    let hasher = Code::try_from(code)
        .ok()
        .filter(|c| *c == Code::Sha2_256)
        .ok_or(CarError::UnsupportedHash { cid: *cid, code })?;
    if hasher.digest(data) != *cid.hash() {
        return Err(CarError::WrongHash(*cid));
    }
    Ok(())
}

/// Reads a CAR, checking every block's hash.
pub fn read(bytes: &[u8]) -> Result<Car, CarError> {
    if bytes.len() > CAR_BYTES_MAX {
        return Err(CarError::TooLarge);
    }
    futures::executor::block_on(async {
        let malformed = |e: iroh_car::Error| CarError::Malformed(e.to_string());
        let mut reader = CarReader::new(bytes).await.map_err(malformed)?;
        let roots = reader.header().roots().to_vec();
        let mut blocks = Vec::new();
        while let Some((cid, data)) = reader.next_block().await.map_err(malformed)? {
            if blocks.len() == CAR_BLOCKS_MAX {
                return Err(CarError::TooManyBlocks);
            }
            check_block(&cid, &data)?;
            blocks.push((cid, data));
        }
        Ok(Car { roots, blocks })
    })
}

/// Writes a CAR of `roots` and `blocks`.
pub fn write(roots: Vec<Cid>, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    futures::executor::block_on(async {
        let mut out = Vec::new();
        let mut writer = CarWriter::new(CarHeader::new_v1(roots), &mut out);
        writer
            .write_header()
            .await
            .expect("ipvm invariant: a CAR writes to memory");
        for (cid, data) in blocks {
            writer
                .write(*cid, data)
                .await
                .expect("ipvm invariant: a CAR writes to memory");
        }
        writer
            .finish()
            .await
            .expect("ipvm invariant: a CAR writes to memory");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(data: &[u8]) -> (Cid, Vec<u8>) {
        (
            Cid::new_v1(0x55, Code::Sha2_256.digest(data)),
            data.to_vec(),
        )
    }

    #[test]
    fn a_car_reads_back_as_written_and_a_changed_block_is_refused() {
        let blocks = vec![block(b"one"), block(b"two")];
        let bytes = write(vec![blocks[0].0], &blocks);
        let car = read(&bytes).unwrap();
        assert_eq!(car.roots, vec![blocks[0].0]);
        assert_eq!(car.blocks, blocks);
        let mut changed = bytes.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(read(&changed), Err(CarError::WrongHash(blocks[1].0)));
        assert!(matches!(read(b"nonsense"), Err(CarError::Malformed(_))));
    }
}
