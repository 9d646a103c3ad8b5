export const parameters = {
};
