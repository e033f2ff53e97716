//! `earshot check`: every byte of every generation of a data directory (and of its workers'
//! partitions), or of a bucket's current generations, against the generations' own file lists.

use std::path::{Path, PathBuf};

use clap::Args;
use earshot_store::{Depth, FileList};

#[derive(Args)]
pub struct CheckArgs {
    /// Data directory (or bucket, `s3://BUCKET/PREFIX`) to check.
    #[arg(long, short)]
    data: PathBuf,
}

/// What one generation's check found.
struct Verdict {
    /// How it is named in the report: `DIR/gen-000003` or a bucket's pointer.
    name: String,
    current: bool,
    outcome: Result<(usize, u64), String>,
}

pub fn run(a: &CheckArgs) -> anyhow::Result<()> {
    let verdicts = if earshot_remote::is_remote(&a.data) {
        bucket(&a.data)?
    } else {
        let mut all = Vec::new();
        local(&a.data, &mut all)?;
        if all.is_empty() {
            return Err(earshot_store::StoreError::NoData {
                path: a.data.display().to_string(),
            }
            .into());
        }
        all
    };
    let mut bad = 0;
    for v in &verdicts {
        let which = if v.current { " (current)" } else { "" };
        match &v.outcome {
            Ok((files, bytes)) => println!(
                "{}{which}: whole, {files} files, {} bytes checked",
                v.name,
                group(*bytes)
            ),
            Err(why) => {
                bad += 1;
                println!("{}{which}: NOT WHOLE: {why}", v.name);
            }
        }
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} generations are not whole (see above): readers refuse them",
            verdicts.len()
        );
    }
    println!("every generation is whole ({})", verdicts.len());
    Ok(())
}

fn verdict(name: String, current: bool, dir: &Path) -> Verdict {
    let outcome = FileList::verify(dir, Depth::Full)
        .map(|list| {
            let bytes = list.files.values().map(|f| f.bytes).sum();
            (list.files.len(), bytes)
        })
        .map_err(|e| match e {
            earshot_store::StoreError::NotWhole { file, problem, .. } => {
                format!("{file} {problem}")
            }
            e => e.to_string(),
        });
    Verdict {
        name,
        current,
        outcome,
    }
}

/// Every generation in `data` and, for a group of workers, in each partition's directory.
fn local(data: &Path, out: &mut Vec<Verdict>) -> anyhow::Result<()> {
    let current = earshot_store::resolve_current(data).ok();
    let mut names: Vec<PathBuf> = match std::fs::read_dir(data) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
            .map(|e| e.path())
            .collect(),
        Err(e) => {
            return Err(anyhow::anyhow!("cannot read {}: {e}", data.display()));
        }
    };
    names.sort();
    if let Some(c) = &current
        && !names.iter().any(|n| n == c)
    {
        out.push(Verdict {
            name: c.display().to_string(),
            current: true,
            outcome: Err("`current` names it, but it is not in the directory".into()),
        });
    }
    for dir in names {
        let is_current = current
            .as_ref()
            .is_some_and(|c| std::fs::canonicalize(&dir).is_ok_and(|d| &d == c));
        out.push(verdict(dir.display().to_string(), is_current, &dir));
    }
    let partitions = data.join(earshot_ingest::kafka::PARTITIONS);
    if let Ok(entries) = std::fs::read_dir(&partitions) {
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            local(&dir, out)?;
        }
    }
    Ok(())
}

/// A bucket's current generation and each partition's, pulled (every byte verified) into a
/// scratch directory.
fn bucket(data: &Path) -> anyhow::Result<Vec<Verdict>> {
    let remote = earshot_remote::Remote::open(&data.to_string_lossy())?;
    let scratch = tempfile::Builder::new()
        .prefix("earshot-check-")
        .tempdir()?;
    let mut dirs = vec![String::new()];
    for p in remote.children(earshot_ingest::kafka::PARTITIONS)? {
        dirs.push(format!("{}/{p}", earshot_ingest::kafka::PARTITIONS));
    }
    let mut out = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let Some(current) = remote.current(dir)? else {
            continue;
        };
        let Some(generation) = current.generation() else {
            continue;
        };
        let name = format!(
            "{}/{}{generation}",
            remote.url().trim_end_matches('/'),
            if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            }
        );
        let local = scratch.path().join(i.to_string());
        let outcome = match remote.pull(&current, &local) {
            Ok(Some(dir)) => FileList::read(&dir)
                .map(|list| {
                    let bytes = list.files.values().map(|f| f.bytes).sum();
                    (list.files.len(), bytes)
                })
                .map_err(|e| e.to_string()),
            Ok(None) => continue,
            Err(e) => Err(e.to_string()),
        };
        out.push(Verdict {
            name,
            current: true,
            outcome,
        });
    }
    if out.is_empty() {
        return Err(earshot_store::StoreError::NoData {
            path: data.display().to_string(),
        }
        .into());
    }
    Ok(out)
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
