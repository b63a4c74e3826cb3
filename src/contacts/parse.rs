//! Reading BGS `findPersonByPtcpntId` responses (BGS.md).
//!
//! Elements are matched by local name only: WebLogic picks prefixes freely (`S:`, `env:`, `ns0:`), adds
//! headers we do not care about (`WorkContext`), and the `PersonDTO` children are unqualified anyway. The
//! only structure we rely on is the path from the envelope root, so a `firstNm` somewhere else (a nested DTO,
//! a header) can never be mistaken for the person's first name.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// What a well-formed BGS response said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BgsAnswer {
    /// A `PersonDTO` was returned. `first_name` is `firstNm` trimmed, `None` when missing or blank.
    Person { first_name: Option<String> },
    /// An empty `findPersonByPtcpntIdResponse`: BGS knows no such participant.
    NoPerson,
    /// A SOAP fault.
    Fault(Fault),
}

/// The text of a SOAP fault. Upstream free text: classify it, never log it or put it in an error.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) code: String,
    pub(crate) string: String,
    /// `detail/*/message` (`MessageException` or `ShareException`), empty when absent.
    pub(crate) detail_message: String,
}

/// A response we cannot read. Deliberately carries no source error: quick-xml's messages may quote
/// fragments of the document, and the document holds PII.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("response is not well-formed UTF-8 XML")]
    Malformed,
    #[error("response is not a SOAP envelope with a body")]
    NotSoap,
    #[error("SOAP body holds neither findPersonByPtcpntIdResponse nor Fault")]
    UnexpectedBody,
}

/// The elements whose position matters; everything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Envelope,
    Body,
    Response,
    PersonDto,
    FirstNm,
    Fault,
    FaultCode,
    FaultString,
    Detail,
    Message,
    Other,
}

impl Tag {
    fn of(start: &BytesStart<'_>) -> Self {
        match start.local_name().as_ref() {
            b"Envelope" => Self::Envelope,
            b"Body" => Self::Body,
            b"findPersonByPtcpntIdResponse" => Self::Response,
            b"PersonDTO" => Self::PersonDto,
            b"firstNm" => Self::FirstNm,
            b"Fault" => Self::Fault,
            b"faultcode" => Self::FaultCode,
            b"faultstring" => Self::FaultString,
            b"detail" => Self::Detail,
            b"message" => Self::Message,
            _ => Self::Other,
        }
    }
}

/// Accumulates what the walk over the document found.
#[derive(Default)]
struct Found {
    saw_body: bool,
    saw_response: bool,
    /// Only the first `PersonDTO` counts; BGS returns at most one for a participant id.
    persons: usize,
    first_name: String,
    fault: Option<Fault>,
}

impl Found {
    /// Called when an element opens, with the stack already including it.
    fn open(&mut self, path: &[Tag]) {
        use Tag::*;
        match path {
            [Envelope, Body] => self.saw_body = true,
            [Envelope, Body, Response] => self.saw_response = true,
            [Envelope, Body, Response, PersonDto] => self.persons += 1,
            [Envelope, Body, Fault] => self.fault = Some(self::Fault::default()),
            _ => {}
        }
    }

    /// Called for text (or CDATA) directly inside the innermost element of `path`.
    fn text(&mut self, path: &[Tag], text: &str) {
        use Tag::*;
        match path {
            [Envelope, Body, Response, PersonDto, FirstNm] if self.persons == 1 => self.first_name.push_str(text),
            [Envelope, Body, Fault, FaultCode] => self.fault_mut().code.push_str(text),
            [Envelope, Body, Fault, FaultString] => self.fault_mut().string.push_str(text),
            [Envelope, Body, Fault, Detail, .., Message] => self.fault_mut().detail_message.push_str(text),
            _ => {}
        }
    }

    fn fault_mut(&mut self) -> &mut self::Fault {
        self.fault.get_or_insert_with(Default::default)
    }

    fn finish(self) -> Result<BgsAnswer, ParseError> {
        if !self.saw_body {
            return Err(ParseError::NotSoap);
        }
        if let Some(fault) = self.fault {
            return Ok(BgsAnswer::Fault(fault));
        }
        if !self.saw_response {
            return Err(ParseError::UnexpectedBody);
        }
        if self.persons == 0 {
            return Ok(BgsAnswer::NoPerson);
        }
        let first_name = self.first_name.trim();
        Ok(BgsAnswer::Person { first_name: (!first_name.is_empty()).then(|| first_name.to_owned()) })
    }
}

/// Reads a BGS response body, whatever its HTTP status (faults come with 500, answers with 200).
pub(crate) fn parse_response(body: &[u8]) -> Result<BgsAnswer, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::Malformed)?;
    let mut reader = Reader::from_str(text);
    let mut path: Vec<Tag> = Vec::with_capacity(8);
    let mut found = Found::default();
    loop {
        match reader.read_event().map_err(|_| ParseError::Malformed)? {
            Event::Start(start) => {
                let tag = Tag::of(&start);
                if path.is_empty() && tag != Tag::Envelope {
                    return Err(ParseError::NotSoap);
                }
                path.push(tag);
                found.open(&path);
            }
            Event::Empty(start) => {
                let tag = Tag::of(&start);
                if path.is_empty() && tag != Tag::Envelope {
                    return Err(ParseError::NotSoap);
                }
                path.push(tag);
                found.open(&path);
                path.pop();
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|_| ParseError::Malformed)?;
                found.text(&path, &text);
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|_| ParseError::Malformed)?;
                found.text(&path, &text);
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions and doctypes carry nothing we read.
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    found.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUND_S_PREFIX: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/">
  <env:Header xmlns:env="http://schemas.xmlsoap.org/soap/envelope/">
    <work:WorkContext xmlns:work="http://oracle.com/weblogic/soap/workarea/">rO0ABXdZABl3ZWJsb2dpYy5hcHAuUGVyc29uV2ViU2VydmljZQAAANYAAAAjd2VibG9naWMud29ya2FyZWEuU3RyaW5nV29ya0NvbnRleHQ=</work:WorkContext>
  </env:Header>
  <S:Body>
    <ns0:findPersonByPtcpntIdResponse xmlns:ns0="http://person.services.vetsnet.vba.va.gov/">
      <PersonDTO>
        <brthdyDt>1950-03-02T00:00:00-05:00</brthdyDt>
        <emailAddr>nobody@example.com</emailAddr>
        <fileNbr>796000001</fileNbr>
        <firstNm>WESLEY                        </firstNm>
        <jrnDt>2019-04-04T12:32:56-05:00</jrnDt>
        <jrnLctnId>281</jrnLctnId>
        <jrnObjId>VAgovAPI</jrnObjId>
        <jrnStatusTypeCd>U</jrnStatusTypeCd>
        <jrnUserId>VAgovAPI</jrnUserId>
        <lastNm>FORD                          </lastNm>
        <middleNm>W</middleNm>
        <ptcpntDTO><ptcpntId>600043201</ptcpntId><ptcpntTypeNm>Person</ptcpntTypeNm></ptcpntDTO>
        <ptcpntId>600043201</ptcpntId>
        <vetInd>Y</vetInd>
      </PersonDTO>
    </ns0:findPersonByPtcpntIdResponse>
  </S:Body>
</S:Envelope>"#;

    fn person(first_name: Option<&str>) -> BgsAnswer {
        BgsAnswer::Person { first_name: first_name.map(str::to_owned) }
    }

    #[test]
    fn found_with_s_prefix_work_context_and_padding() {
        assert_eq!(parse_response(FOUND_S_PREFIX.as_bytes()), Ok(person(Some("WESLEY"))));
    }

    #[test]
    fn found_with_env_prefix_and_default_namespace() {
        let xml = r#"<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"><env:Header/><env:Body>
            <findPersonByPtcpntIdResponse xmlns="http://person.services.vetsnet.vba.va.gov/">
            <PersonDTO xmlns=""><lastNm>DOE</lastNm><firstNm> MARY ANN </firstNm></PersonDTO>
            </findPersonByPtcpntIdResponse></env:Body></env:Envelope>"#;
        assert_eq!(parse_response(xml.as_bytes()), Ok(person(Some("MARY ANN"))));
    }

    #[test]
    fn escaped_and_cdata_names_are_decoded() {
        let xml = r#"<S:Envelope xmlns:S="s"><S:Body><r:findPersonByPtcpntIdResponse xmlns:r="r"><PersonDTO>
            <firstNm>O&apos;NEIL</firstNm></PersonDTO></r:findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        assert_eq!(parse_response(xml.as_bytes()), Ok(person(Some("O'NEIL"))));
        let xml = r#"<S:Envelope xmlns:S="s"><S:Body><r:findPersonByPtcpntIdResponse xmlns:r="r"><PersonDTO>
            <firstNm><![CDATA[ZOË]]></firstNm></PersonDTO></r:findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        assert_eq!(parse_response(xml.as_bytes()), Ok(person(Some("ZOË"))));
    }

    #[test]
    fn empty_response_is_no_person() {
        let open_close = r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>
            <ns0:findPersonByPtcpntIdResponse xmlns:ns0="http://person.services.vetsnet.vba.va.gov/">
            </ns0:findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        let self_closing = r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body>
            <ns0:findPersonByPtcpntIdResponse xmlns:ns0="http://person.services.vetsnet.vba.va.gov/"/>
            </S:Body></S:Envelope>"#;
        assert_eq!(parse_response(open_close.as_bytes()), Ok(BgsAnswer::NoPerson));
        assert_eq!(parse_response(self_closing.as_bytes()), Ok(BgsAnswer::NoPerson));
    }

    #[test]
    fn person_without_or_with_blank_first_name() {
        let missing = r#"<S:Envelope xmlns:S="s"><S:Body><findPersonByPtcpntIdResponse><PersonDTO>
            <lastNm>FORD</lastNm><ptcpntDTO><firstNm>NOT-THIS-ONE</firstNm></ptcpntDTO></PersonDTO>
            </findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        let blank = r#"<S:Envelope xmlns:S="s"><S:Body><findPersonByPtcpntIdResponse><PersonDTO>
            <firstNm>     </firstNm></PersonDTO></findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        let empty = r#"<S:Envelope xmlns:S="s"><S:Body><findPersonByPtcpntIdResponse><PersonDTO>
            <firstNm/></PersonDTO></findPersonByPtcpntIdResponse></S:Body></S:Envelope>"#;
        for xml in [missing, blank, empty] {
            assert_eq!(parse_response(xml.as_bytes()), Ok(person(None)), "{xml}");
        }
    }

    #[test]
    fn first_name_in_a_header_is_ignored() {
        let xml = r#"<S:Envelope xmlns:S="s"><S:Header><PersonDTO><firstNm>HEADER</firstNm></PersonDTO></S:Header>
            <S:Body><findPersonByPtcpntIdResponse/></S:Body></S:Envelope>"#;
        assert_eq!(parse_response(xml.as_bytes()), Ok(BgsAnswer::NoPerson));
    }

    #[test]
    fn fault_with_message_exception() {
        let xml = r#"<?xml version='1.0' encoding='UTF-8'?>
<env:Envelope xmlns:env="http://schemas.xmlsoap.org/soap/envelope/"><env:Header/><env:Body><env:Fault>
<faultcode xmlns:ns0="http://schemas.xmlsoap.org/soap/envelope/">ns0:Server</faultcode>
<faultstring>Logon ID VAGOVAPI Not Found in the Benefits Gateway Service (BGS).</faultstring>
<detail><ns0:MessageException xmlns:ns0="http://services.share.benefits.vba.va.gov/">
<message>Logon ID VAGOVAPI Not Found in the Benefits Gateway Service (BGS). Contact your ISO.</message>
</ns0:MessageException></detail></env:Fault></env:Body></env:Envelope>"#;
        let Ok(BgsAnswer::Fault(fault)) = parse_response(xml.as_bytes()) else { panic!("expected a fault") };
        assert_eq!(fault.code, "ns0:Server");
        assert!(fault.string.starts_with("Logon ID VAGOVAPI"));
        assert!(fault.detail_message.ends_with("Contact your ISO."));
    }

    #[test]
    fn fault_with_share_exception() {
        let xml = r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><S:Fault>
<faultcode>S:Server</faultcode><faultstring>gov.va.vba.benefits.share.ShareException</faultstring>
<detail><ns1:ShareException xmlns:ns1="http://services.share.benefits.vba.va.gov/"><message>The Tuxedo service is down</message>
</ns1:ShareException></detail></S:Fault></S:Body></S:Envelope>"#;
        let Ok(BgsAnswer::Fault(fault)) = parse_response(xml.as_bytes()) else { panic!("expected a fault") };
        assert_eq!(fault.detail_message, "The Tuxedo service is down");
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(parse_response(b"<html><body>Bad Gateway</body></html>"), Err(ParseError::NotSoap));
        assert_eq!(parse_response(b"upstream request timeout"), Err(ParseError::NotSoap));
        assert_eq!(parse_response(b"<S:Envelope><S:Body></S:Envelope>"), Err(ParseError::Malformed));
        assert_eq!(parse_response(&[0x3c, 0xff, 0xfe]), Err(ParseError::Malformed));
        assert_eq!(
            parse_response(br#"<S:Envelope xmlns:S="s"><S:Body><other/></S:Body></S:Envelope>"#),
            Err(ParseError::UnexpectedBody)
        );
        assert_eq!(parse_response(br#"<S:Envelope xmlns:S="s"/>"#), Err(ParseError::NotSoap));
    }
}
