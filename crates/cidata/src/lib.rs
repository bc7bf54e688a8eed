//! Builds a cloud-init NoCloud seed: a FAT image labelled `cidata` holding `user-data`,
//! `meta-data` and (when given) `network-config`, made in memory with the `fatfs` crate.
//!
//! Pure: it takes the composed files ([`model::SeedFiles`]) and returns the image's bytes; the
//! engine writes them into the VM's directory. The same files always give the same bytes (no
//! timestamps, a fixed volume id), so an unchanged seed is never rewritten.

use std::io::{Cursor, Write};

use model::SeedFiles;

/// The volume label NoCloud looks for.
pub const LABEL: &[u8; 11] = b"cidata     ";
/// The image size: room for three files of at most 64 KiB each, plus FAT12 overhead.
pub const IMAGE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the cloud-init seed image ({step})")]
pub struct SeedError {
    step: &'static str,
    #[source]
    source: std::io::Error,
}

fn at(step: &'static str) -> impl FnOnce(std::io::Error) -> SeedError {
    move |source| SeedError { step, source }
}

/// The seed image for these files.
pub fn build(files: &SeedFiles) -> Result<Vec<u8>, SeedError> {
    let mut disk = Cursor::new(vec![0u8; IMAGE_BYTES]);
    let opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat12)
        .volume_label(*LABEL)
        .volume_id(0x6369_6461);
    fatfs::format_volume(&mut disk, opts).map_err(at("format"))?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(at("open"))?;
        let put = |name: &str, text: &str| -> Result<(), SeedError> {
            let mut f = fs
                .root_dir()
                .create_file(name)
                .map_err(at("create a file"))?;
            f.truncate().map_err(at("create a file"))?;
            f.write_all(text.as_bytes()).map_err(at("write a file"))?;
            f.flush().map_err(at("write a file"))
        };
        put("meta-data", &files.meta_data)?;
        put("user-data", &files.user_data)?;
        if let Some(n) = &files.network_config {
            put("network-config", n)?;
        }
        fs.unmount().map_err(at("finish"))?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read(img: &[u8], name: &str) -> Option<String> {
        let fs = fatfs::FileSystem::new(Cursor::new(img.to_vec()), fatfs::FsOptions::new()).ok()?;
        let mut s = String::new();
        fs.root_dir()
            .open_file(name)
            .ok()?
            .read_to_string(&mut s)
            .ok()?;
        Some(s)
    }

    #[test]
    fn the_image_holds_the_files_under_the_cidata_label() {
        let big = format!(
            "#cloud-config\n#{}\n",
            "x".repeat(model::MAX_SEED_FILE - 20)
        );
        let files = SeedFiles {
            user_data: big.clone(),
            meta_data: "instance-id: i-1\n".into(),
            network_config: Some("version: 2\n".into()),
        };
        let img = build(&files).unwrap();
        assert_eq!(img.len(), IMAGE_BYTES);
        let fs = fatfs::FileSystem::new(Cursor::new(img.clone()), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        assert_eq!(read(&img, "user-data").as_deref(), Some(big.as_str()));
        assert_eq!(
            read(&img, "meta-data").as_deref(),
            Some("instance-id: i-1\n")
        );
        assert_eq!(
            read(&img, "network-config").as_deref(),
            Some("version: 2\n")
        );
        assert_eq!(
            build(&files).unwrap(),
            img,
            "the same files give the same bytes"
        );
        let none = build(&SeedFiles {
            network_config: None,
            ..files
        })
        .unwrap();
        assert_eq!(read(&none, "network-config"), None);
    }
}
