//! Kandle's end-to-end suite and the two stand-ins it brings for machines without a
//! cluster: [`apiserver`] (a Kubernetes API server in process) and [`agent`] (a node agent
//! that runs pods as local processes, against any API server).

pub mod agent;
pub mod apiserver;
pub mod cluster;
