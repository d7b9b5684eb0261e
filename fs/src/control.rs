//! The control plane as the fs uses it, through the one client ([`api::Api`], which
//! logs in again before the JWT expires): the tree's lists, the changes `mkdir`/`rmdir`/`mv`/
//! `chmod` make, and batched hit counts. The tree follows the client's SSE stream.

use crate::FsError;
use api::directories::{CreateDirectory, DirPath, DirectoryView, UpdateDirectory};
use api::triggers::{AddHits, TriggerView, UpdateTrigger};
use api::Api;
use serde::de::IgnoredAny;

pub use api::client::Login;

/// The team's directories and triggers.
pub async fn lists(api: &Api) -> Result<(Vec<DirectoryView>, Vec<TriggerView>), FsError> {
    Ok((api.get("/directories").await?, api.get("/triggers").await?))
}

/// `mkdir /a/b` (its parent exists: the kernel looked it up).
pub async fn mkdir(api: &Api, path: &DirPath) -> Result<(), FsError> {
    let body = CreateDirectory {
        path: path.absolute(),
        parents: None,
    };
    let _: IgnoredAny = api.post("/directories", &body).await?;
    Ok(())
}

/// `rmdir /a/b` (the API refuses one that holds triggers or directories).
pub async fn rmdir(api: &Api, path: &DirPath) -> Result<(), FsError> {
    let _: IgnoredAny = api
        .delete(&format!("/directories/{}", path.url_part()))
        .await?;
    Ok(())
}

/// `mv /a/b /c`: the directory and everything in it.
pub async fn move_dir(api: &Api, from: &DirPath, to: &DirPath) -> Result<(), FsError> {
    let body = UpdateDirectory {
        path: to.absolute(),
    };
    let _: IgnoredAny = api
        .patch(&format!("/directories/{}", from.url_part()), &body)
        .await?;
    Ok(())
}

/// Changes a trigger (`mv`, `chmod`).
pub async fn patch_trigger(api: &Api, id: i64, change: &UpdateTrigger) -> Result<(), FsError> {
    let _: IgnoredAny = api.patch(&format!("/triggers/{id}"), change).await?;
    Ok(())
}

/// Adds `count` runs to a trigger's hits.
pub async fn add_hits(api: &Api, id: i64, count: u32) -> Result<(), FsError> {
    let _: IgnoredAny = api
        .post(
            &format!("/triggers/{id}/hits"),
            &AddHits { count: Some(count) },
        )
        .await?;
    Ok(())
}
