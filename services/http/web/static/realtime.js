// A client of this service's Realtime WebSocket (/v1/realtime, OpenAI's Realtime beta events).

export class RealtimeClient {
  constructor(url) {
    this.url = url;
    this.socket = null;
    this.handlers = new Map(); // event type -> [handler]; "*" gets every event
    this.sent = 0; // client events sent with an id
    this.session = null; // the server's view of the session (session.created / session.updated)
  }

  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(handler);
    return this;
  }

  get isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  // Opens the socket; resolves with the session once the server has sent session.created.
  connect() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url, ["realtime", "openai-beta.realtime-v1"]);
      this.socket = socket;
      let created = false;
      socket.onmessage = (message) => {
        const event = JSON.parse(message.data);
        if (event.type === "session.created" || event.type === "session.updated") this.session = event.session;
        if (event.type === "session.created" && !created) {
          created = true;
          resolve(event.session);
        }
        this.#dispatch(event);
      };
      socket.onerror = () => {
        if (!created) reject(new Error(`could not connect to ${this.url}`));
      };
      socket.onclose = (close) => {
        if (!created) reject(new Error(`the server closed the connection (${close.code} ${close.reason})`));
        this.#dispatch({ type: "close", code: close.code, reason: close.reason });
      };
    });
  }

  send(event) {
    if (this.isOpen) this.socket.send(JSON.stringify(event));
  }

  // Resolves with the session of the server's session.updated answering this update; rejects on its error event.
  update(session) {
    const eventId = `web_${++this.sent}`;
    return new Promise((resolve, reject) => {
      const settle = (event) => {
        if (event.type === "error" && event.error?.event_id !== eventId) return;
        this.#off("session.updated", settle);
        this.#off("error", settle);
        this.#off("close", settle);
        if (event.type === "error") reject(new Error(event.error.message));
        else if (event.type === "close") reject(new Error("the connection closed"));
        else resolve(event.session);
      };
      this.on("session.updated", settle).on("error", settle).on("close", settle);
      this.send({ type: "session.update", event_id: eventId, session });
    });
  }

  close() {
    this.socket?.close(1000, "client closed");
  }

  #off(type, handler) {
    const list = this.handlers.get(type) ?? [];
    if (list.includes(handler)) list.splice(list.indexOf(handler), 1);
  }

  #dispatch(event) {
    for (const handler of [...(this.handlers.get(event.type) ?? []), ...(this.handlers.get("*") ?? [])]) handler(event);
  }
}

export function realtimeUrl(model = "") {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = model ? `?model=${encodeURIComponent(model)}` : "";
  return `${scheme}//${location.host}/v1/realtime${query}`;
}
