//! The kubelet log endpoint (placeholder until it lands).

use crate::config::RunConfig;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {}

pub async fn serve(cfg: RunConfig) -> Result<(), LogsError> {
    let _ = cfg;
    std::future::pending().await
}
