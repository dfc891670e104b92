// Building the page from data without ever parsing data as HTML: every
// string becomes a text node or an attribute value (never innerHTML).

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "selected") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** An HTML element: h("a", {href, class, onclick}, "text", otherNode, ...). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  apply(el, props);
  append(el, children);
  return el;
}

/** An SVG element, the same way. */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, props);
  append(el, children);
  return el;
}

/** Replace everything inside ``el`` with ``children``. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table whose rows never widen the page: it scrolls inside its box. */
export function table(headers, rows, cls) {
  return h("div", {class: "table-wrap"},
    h("table", {class: cls || null},
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows)));
}

/** A definition list of [term, value] pairs, skipping null values. */
export function facts(pairs) {
  return h("dl", {class: "facts"},
    pairs.filter((p) => p && p[1] !== null && p[1] !== undefined)
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function button(label, onclick, cls) {
  return h("button", {type: "button", class: cls || null, onclick}, label);
}

/** A one-line message in a box: kind is "error", "warn", "ok" or "info". */
export function notice(kind, ...text) {
  return h("p", {class: `notice ${kind}`, role: kind === "error" ? "alert" : null}, ...text);
}
