//! List Blobs and List Containers answers (XML) into plain data.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;

use super::{BlobError, BlobItem, BlobProps, ContainerInfo, ListPage};

#[derive(Deserialize)]
struct BlobResults {
    #[serde(rename = "Blobs", default)]
    blobs: BlobsXml,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct BlobsXml {
    #[serde(rename = "$value", default)]
    items: Vec<BlobEntry>,
}

#[derive(Deserialize)]
enum BlobEntry {
    Blob(Box<BlobXml>),
    BlobPrefix(PrefixXml),
}

#[derive(Deserialize)]
struct BlobXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: PropsXml,
    #[serde(rename = "Metadata", default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct PrefixXml {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct PropsXml {
    #[serde(rename = "Content-Length", default)]
    content_length: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Etag", default)]
    etag: String,
}

#[derive(Deserialize)]
struct ContainerResults {
    #[serde(rename = "Containers", default)]
    containers: ContainersXml,
    #[serde(rename = "NextMarker", default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct ContainersXml {
    #[serde(rename = "Container", default)]
    items: Vec<ContainerXml>,
}

#[derive(Deserialize)]
struct ContainerXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Properties")]
    properties: ContainerPropsXml,
}

#[derive(Deserialize)]
struct ContainerPropsXml {
    #[serde(rename = "Last-Modified")]
    last_modified: String,
}

#[derive(Deserialize)]
struct BlockListXml {
    #[serde(rename = "CommittedBlocks", default)]
    committed: BlocksXml,
}

#[derive(Deserialize, Default)]
struct BlocksXml {
    #[serde(rename = "Block", default)]
    items: Vec<BlockXml>,
}

#[derive(Deserialize)]
struct BlockXml {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Size")]
    size: u64,
}

/// The committed blocks of a Get Block List answer: (block id, size) in blob order.
pub fn parse_block_list(xml: &str) -> Result<Vec<(String, u64)>, BlobError> {
    let r: BlockListXml = quick_xml::de::from_str(xml).map_err(bad)?;
    Ok(r.committed
        .items
        .into_iter()
        .map(|b| (b.name, b.size))
        .collect())
}

/// The body of Put Block List. Every id is `Latest`: the service takes the uncommitted block
/// if there is one (ids this writer staged are unique to it) and the committed one otherwise.
pub fn block_list_body(ids: &[String]) -> String {
    let mut s = String::with_capacity(40 + ids.len() * 64);
    s.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for id in ids {
        // Block ids are base64: nothing in them needs escaping.
        s.push_str("<Latest>");
        s.push_str(id);
        s.push_str("</Latest>");
    }
    s.push_str("</BlockList>");
    s
}

pub fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

pub fn parse_time(s: &str) -> SystemTime {
    httpdate::parse_http_date(s.trim()).unwrap_or(SystemTime::UNIX_EPOCH)
}

fn bad(e: quick_xml::DeError) -> BlobError {
    BlobError::BadResponse(format!("list XML: {e}"))
}

fn marker(m: Option<String>) -> Option<String> {
    m.filter(|m| !m.is_empty())
}

pub fn parse_blob_list(xml: &str) -> Result<ListPage, BlobError> {
    let r: BlobResults = quick_xml::de::from_str(xml).map_err(bad)?;
    let mut page = ListPage {
        next_marker: marker(r.next_marker),
        ..Default::default()
    };
    for item in r.blobs.items {
        match item {
            BlobEntry::Blob(b) => page.blobs.push({
                let b = *b;
                BlobItem {
                    name: b.name,
                    props: BlobProps {
                        size: b.properties.content_length,
                        etag: normalize_etag(&b.properties.etag),
                        last_modified: parse_time(&b.properties.last_modified),
                        metadata: b.metadata.unwrap_or_default(),
                        system: None,
                    },
                }
            }),
            BlobEntry::BlobPrefix(p) => page.prefixes.push(p.name),
        }
    }
    Ok(page)
}

pub fn parse_container_list(xml: &str) -> Result<(Vec<ContainerInfo>, Option<String>), BlobError> {
    let r: ContainerResults = quick_xml::de::from_str(xml).map_err(bad)?;
    let items = r
        .containers
        .items
        .into_iter()
        .map(|c| ContainerInfo {
            name: c.name,
            last_modified: parse_time(&c.properties.last_modified),
        })
        .collect();
    Ok((items, marker(r.next_marker)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_list_with_prefixes_metadata_and_marker() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://x/" ContainerName="c">
  <Prefix>a/</Prefix><Delimiter>/</Delimiter>
  <Blobs>
    <BlobPrefix><Name>a/d&amp;e/</Name></BlobPrefix>
    <Blob><Name>a/f &amp; g.txt</Name><Properties>
      <Last-Modified>Wed, 21 Oct 2015 07:28:00 GMT</Last-Modified>
      <Etag>0x8D1</Etag><Content-Length>12</Content-Length><BlobType>BlockBlob</BlobType>
    </Properties><Metadata><hdi_isfolder>true</hdi_isfolder></Metadata></Blob>
    <Blob><Name>a/z</Name><Properties><Last-Modified>Wed, 21 Oct 2015 07:28:00 GMT</Last-Modified>
      <Etag>"0x8D2"</Etag><Content-Length>0</Content-Length></Properties><Metadata /></Blob>
  </Blobs>
  <NextMarker>m1</NextMarker>
</EnumerationResults>"#;
        let p = parse_blob_list(xml).unwrap();
        assert_eq!(p.prefixes, vec!["a/d&e/"]);
        assert_eq!(p.blobs[0].name, "a/f & g.txt");
        assert_eq!(p.blobs[0].props.size, 12);
        assert_eq!(p.blobs[0].props.etag, "0x8D1");
        assert!(p.blobs[0].props.is_folder_marker());
        assert_eq!(p.blobs[0].props.system, None);
        assert_eq!(p.blobs[1].props.etag, "0x8D2");
        assert!(!p.blobs[1].props.is_folder_marker());
        assert_eq!(p.next_marker.as_deref(), Some("m1"));
    }

    #[test]
    fn empty_list_and_empty_marker() {
        let p = parse_blob_list("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>")
            .unwrap();
        assert!(p.blobs.is_empty() && p.prefixes.is_empty() && p.next_marker.is_none());
    }

    #[test]
    fn block_list() {
        let l = parse_block_list(
            "<BlockList><CommittedBlocks><Block><Name>QUE=</Name><Size>4</Size></Block>\
             <Block><Name>QkI=</Name><Size>2</Size></Block></CommittedBlocks>\
             <UncommittedBlocks /></BlockList>",
        )
        .unwrap();
        assert_eq!(l, vec![("QUE=".to_string(), 4), ("QkI=".to_string(), 2)]);
        assert!(
            parse_block_list("<BlockList><CommittedBlocks /></BlockList>")
                .unwrap()
                .is_empty()
        );
        assert!(block_list_body(&["QUE=".into()]).ends_with("<Latest>QUE=</Latest></BlockList>"));
    }

    #[test]
    fn container_list() {
        let (c, m) = parse_container_list(
            "<EnumerationResults><Containers><Container><Name>input</Name><Properties>\
             <Last-Modified>Wed, 21 Oct 2015 07:28:00 GMT</Last-Modified></Properties>\
             </Container></Containers><NextMarker/></EnumerationResults>",
        )
        .unwrap();
        assert_eq!(c[0].name, "input");
        assert!(m.is_none());
    }
}
