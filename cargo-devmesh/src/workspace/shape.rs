//! What of `cargo metadata` the plan uses: the workspace's members, their
//! binaries, whether they link devmesh, and which members each depends
//! on. Small and serializable, so that a test process can keep it
//! between runs (`devmesh-testing` does) rather than ask cargo again.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use cargo_metadata::{Metadata, MetadataCommand, PackageId, TargetKind};
use serde::{Deserialize, Serialize};

use crate::errors::PlanError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub root: PathBuf,
    pub target_directory: PathBuf,
    pub members: Vec<Member>,
    /// The folder of every package given by path (the members, and path
    /// dependencies outside the workspace): what builds from sources here.
    pub path_packages: Vec<PathBuf>,
}

/// A workspace package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: PackageId,
    pub name: String,
    pub dir: PathBuf,
    pub bins: Vec<String>,
    /// It depends on `devmesh` (not only as a dev-dependency).
    pub links_devmesh: bool,
    /// Members it depends on, transitively (not itself).
    pub depends_on: BTreeSet<PackageId>,
}

impl Shape {
    /// Asks `cargo metadata` about the workspace at `manifest_path` (or
    /// around the current folder).
    pub fn read(manifest_path: Option<&std::path::Path>) -> Result<Shape, PlanError> {
        let mut command = MetadataCommand::new();
        if let Some(path) = manifest_path {
            command.manifest_path(path);
        }
        let metadata = command.exec().map_err(|e| PlanError::Metadata(e.to_string()))?;
        Ok(Shape::of(&metadata))
    }

    pub fn of(metadata: &Metadata) -> Shape {
        let members: BTreeSet<&PackageId> = metadata.workspace_members.iter().collect();
        let direct: HashMap<&PackageId, Vec<&PackageId>> = metadata
            .resolve
            .as_ref()
            .map(|resolve| {
                resolve
                    .nodes
                    .iter()
                    .filter(|node| members.contains(&node.id))
                    .map(|node| {
                        (
                            &node.id,
                            node.dependencies.iter().filter(|d| members.contains(d)).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dir = |manifest: &cargo_metadata::camino::Utf8PathBuf| {
            manifest
                .parent()
                .map(|d| d.to_path_buf().into_std_path_buf())
                .unwrap_or_default()
        };
        let members = metadata
            .workspace_packages()
            .into_iter()
            .map(|package| {
                let mut depends_on = BTreeSet::new();
                let mut stack: Vec<&PackageId> = direct.get(&package.id).cloned().unwrap_or_default();
                while let Some(id) = stack.pop() {
                    if depends_on.insert(id.clone()) {
                        stack.extend(direct.get(id).into_iter().flatten().copied());
                    }
                }
                Member {
                    id: package.id.clone(),
                    name: package.name.to_string(),
                    dir: dir(&package.manifest_path),
                    bins: package
                        .targets
                        .iter()
                        .filter(|t| t.is_kind(TargetKind::Bin))
                        .map(|t| t.name.clone())
                        .collect(),
                    links_devmesh: package
                        .dependencies
                        .iter()
                        .any(|d| d.name == "devmesh" && d.kind == cargo_metadata::DependencyKind::Normal),
                    depends_on,
                }
            })
            .collect();
        Shape {
            root: metadata.workspace_root.clone().into_std_path_buf(),
            target_directory: metadata.target_directory.clone().into_std_path_buf(),
            members,
            path_packages: metadata
                .packages
                .iter()
                .filter(|p| p.source.is_none())
                .map(|p| dir(&p.manifest_path))
                .collect(),
        }
    }
}
